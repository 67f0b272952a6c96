//! Any argument vector, including the executable name used for busybox dispatch: the parser
//! answers Run, Info, Usage or a one-line Error, and never panics.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use phylax::cli::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = data.split(|b| *b == 0).map(|a| OsString::from_vec(a.to_vec())).collect();
    if let Parsed::Error(msg) = parse(args) {
        assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    }
});
