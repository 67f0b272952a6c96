//! Bytes a client sends on the KMS socket, through the `:authority` rewriter: malformed HTTP/2 is
//! an error, never a panic, and however the bytes are split across reads the server sees the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phylax::kms::h2_authority::Rewriter;

fn run(data: &[u8], chunk: usize) -> Result<Vec<u8>, String> {
    let mut rw = Rewriter::default();
    let (mut pending, mut out) = (Vec::new(), Vec::new());
    for piece in data.chunks(chunk) {
        pending.extend_from_slice(piece);
        rw.feed(&mut pending, &mut out).map_err(|e| e.to_string())?;
    }
    rw.finish(&pending).map_err(|e| e.to_string())?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    // Start most inputs with the preface so the frame parser is what gets explored.
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let (chunk, rest) = data.split_first().map_or((1, &[][..]), |(c, r)| (usize::from(*c).max(1), r));
    input.extend_from_slice(rest);
    let whole = run(&input, input.len().max(1));
    assert_eq!(whole, run(&input, chunk));
});
