//! Accept the `:authority` that older API servers send.
//!
//! kube-apiserver before 1.32 dials the plugin with grpc-go and the bare socket path as target, so
//! every request carries `:authority: /run/phylax/kms.sock`. That is not a valid URI authority, and
//! the h2 crate under tonic resets such streams with PROTOCOL_ERROR before any handler runs (a
//! known interoperability gap, also hit by other Rust KMS plugins and CSI drivers).
//!
//! `FixedConn` wraps each accepted socket for the gRPC server. What the client sends passes
//! through the `Rewriter`, which forwards every frame untouched except request header blocks. In
//! those it splices, without decoding the rest, each literal `:authority` whose value is not a
//! valid authority: the value is replaced by `x` repeated to the same length, sent as a plain
//! (non-Huffman) string. Same-length values keep the server's HPACK dynamic table byte-for-byte in
//! step with the client's, so no other header needs re-encoding, and later requests that refer to
//! the entry by index get the valid value too. If a connection's first request already carries a
//! valid authority (API servers from 1.32), the rest of it passes through unparsed. Nothing is
//! buffered beyond one frame (or one header block), and malformed input closes the connection. The
//! server's replies are written straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::uri::Authority;
use std::borrow::Cow;

use loona_hpack::huffman::HuffmanDecoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The server never advertises a larger SETTINGS_MAX_FRAME_SIZE, so a well-behaved client never
/// sends a larger frame; we also emit frames no larger than this.
const MAX_FRAME: usize = 16_384;
/// A header block spread over CONTINUATION frames is refused past this size.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from the client: {what}"),
    )
}

/// The client-to-server byte stream transformer. Feed it what the client sent, in any chunks; it
/// emits what the server should read: every frame unchanged except request header blocks, whose
/// authority is fixed. It keeps the client's and the server's HPACK state in step.
pub struct Rewriter {
    state: State,
    /// A header block waiting for its CONTINUATION frames.
    pending: Option<PendingBlock>,
    /// Whether header blocks are being re-encoded (decided by the first request).
    rewriting: bool,
}

enum State {
    /// Waiting for the 24-byte connection preface.
    Preface,
    Frames,
    /// Not HTTP/2 with prior knowledge: bytes pass through and the server answers as it would.
    Passthrough,
}

struct PendingBlock {
    flags: u8,
    stream: u32,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter {
            state: State::Preface,
            pending: None,
            rewriting: false,
        }
    }
}

impl Rewriter {
    /// Consumes every complete unit (preface, frame) at the front of `input`, appending the
    /// server's view to `out`; an incomplete tail stays in `input` for the next call.
    pub fn feed(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<()> {
        let mut pos = 0;
        let result = self.feed_inner(input, &mut pos, out);
        input.drain(..pos);
        result
    }

    fn feed_inner(&mut self, input: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let rest = &input[*pos..];
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(rest);
                    *pos = input.len();
                    return Ok(());
                }
                State::Preface => {
                    let n = rest.len().min(PREFACE.len());
                    if rest[..n] != PREFACE[..n] {
                        self.state = State::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    out.extend_from_slice(PREFACE);
                    *pos += PREFACE.len();
                    self.state = State::Frames;
                }
                State::Frames => {
                    if rest.len() < 9 {
                        return Ok(());
                    }
                    let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
                    if len > MAX_FRAME {
                        return Err(protocol_error("frame larger than the advertised maximum"));
                    }
                    if rest.len() < 9 + len {
                        return Ok(());
                    }
                    let (kind, flags) = (rest[3], rest[4]);
                    let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
                    let payload = &rest[9..9 + len];
                    self.frame(kind, flags, stream, payload, out)?;
                    *pos += 9 + len;
                }
            }
        }
    }

    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        if let Some(pending) = &mut self.pending {
            if kind != FRAME_CONTINUATION || stream != pending.stream {
                return Err(protocol_error("header block interrupted by another frame"));
            }
            if pending.block.len() + payload.len() > MAX_HEADER_BLOCK {
                return Err(protocol_error("header block too large"));
            }
            pending.block.extend_from_slice(payload);
            if flags & FLAG_END_HEADERS != 0
                && let Some(done) = self.pending.take()
            {
                self.emit_block(done, out)?;
            }
            return Ok(());
        }
        match kind {
            FRAME_HEADERS => {
                let (priority, block) = headers_payload(flags, payload)?;
                let pending = PendingBlock {
                    flags: flags & (FLAG_END_STREAM | FLAG_PRIORITY),
                    stream,
                    priority,
                    block,
                };
                if flags & FLAG_END_HEADERS != 0 {
                    self.emit_block(pending, out)?;
                } else {
                    self.pending = Some(pending);
                }
            }
            FRAME_CONTINUATION => return Err(protocol_error("CONTINUATION without HEADERS")),
            _ => {
                put_frame_header(out, payload.len(), kind, flags, stream);
                out.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    fn emit_block(&mut self, b: PendingBlock, out: &mut Vec<u8>) -> io::Result<()> {
        let mut spliced = Vec::with_capacity(b.block.len() + 8);
        let fixed = splice_block(&b.block, &mut spliced)?;
        if !fixed && !self.rewriting {
            // A client that sends a valid authority on its first request (API servers from 1.32,
            // grpc clients with a proper target) keeps it: from here on its bytes pass through
            // without being parsed.
            write_header_block(out, b.flags, b.stream, b.priority, &b.block);
            self.state = State::Passthrough;
            return Ok(());
        }
        self.rewriting = true;
        write_header_block(out, b.flags, b.stream, b.priority, &spliced);
        Ok(())
    }

    /// At end of input: an error if it stopped inside a frame or a header block.
    pub fn finish(&self, input: &[u8]) -> io::Result<()> {
        match self.state {
            State::Passthrough => Ok(()),
            _ if self.pending.is_some() => Err(protocol_error("connection closed inside a header block")),
            _ if !input.is_empty() => Err(protocol_error("connection closed inside a frame")),
            _ => Ok(()),
        }
    }
}

/// The accepted connection as the gRPC server sees it: reads go through the `Rewriter` in line
/// (no extra task or buffer between client and server), writes go straight to the socket.
pub struct FixedConn<S> {
    inner: S,
    rewriter: Rewriter,
    input: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl<S> FixedConn<S> {
    pub fn new(inner: S) -> FixedConn<S> {
        FixedConn {
            inner,
            rewriter: Rewriter::default(),
            input: Vec::with_capacity(MAX_FRAME + 9),
            out: Vec::with_capacity(MAX_FRAME + 9),
            out_pos: 0,
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixedConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(this.rewriter.finish(&this.input));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(rb.filled());
                    this.rewriter.feed(&mut this.input, &mut this.out)?;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixedConn<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies one HPACK header block (RFC 7541), representation by representation, changing only a
/// literal `:authority` whose value is not a valid URI authority: that value is replaced by a valid
/// one of the same length (`x` repeated). Every table entry then has the same size on both sides,
/// so the server's dynamic table stays identical to the client's and nothing else needs decoding;
/// later requests that refer to the entry by index get the valid value. Returns whether it fixed
/// anything.
///
/// Only the static `:authority` name (index 1) and a literal name are recognised; a client that
/// names `:authority` through a dynamic-table entry is passed through unchanged (Go's and Rust's
/// HPACK encoders always use the static name).
pub fn splice_block(block: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
    let mut fixed = false;
    let mut rest = block;
    while let Some(&first) = rest.first() {
        let used = if first & 0x80 != 0 {
            hpack_int(rest, 7)?.1 // indexed field
        } else if first & 0xe0 == 0x20 {
            hpack_int(rest, 5)?.1 // dynamic table size update
        } else {
            // A literal: with incremental indexing (01), without indexing (0000), never indexed (0001).
            let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
            let (name_index, mut n) = hpack_int(rest, prefix)?;
            let is_authority = if name_index == 0 {
                let (huffman, name, used) = hpack_str(&rest[n..])?;
                n += used;
                string_value(huffman, name)?.as_ref() == b":authority"
            } else {
                name_index == 1
            };
            let value_at = n;
            let (huffman, value, used) = hpack_str(&rest[n..])?;
            n += used;
            if is_authority {
                let value = string_value(huffman, value)?;
                if !value.is_empty() && Authority::try_from(value.as_ref()).is_err() {
                    out.extend_from_slice(&rest[..value_at]);
                    put_int(out, 0x00, 7, value.len());
                    out.resize(out.len() + value.len(), b'x');
                    fixed = true;
                    rest = &rest[n..];
                    continue;
                }
            }
            n
        };
        out.extend_from_slice(&rest[..used]);
        rest = &rest[used..];
    }
    Ok(fixed)
}

/// An integer with an N-bit prefix (RFC 7541 section 5.1): its value and the bytes it took.
fn hpack_int(buf: &[u8], prefix: u8) -> io::Result<(usize, usize)> {
    let truncated = || protocol_error("truncated header block");
    let max = (1usize << prefix) - 1;
    let value = usize::from(*buf.first().ok_or_else(truncated)?) & max;
    if value < max {
        return Ok((value, 1));
    }
    let mut value = value;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        let shift = 7 * (i - 1);
        if shift > 28 {
            return Err(protocol_error("header block integer too large"));
        }
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(truncated())
}

/// A string literal (RFC 7541 section 5.2): whether it is Huffman-coded, its octets, and the bytes
/// it took.
fn hpack_str(buf: &[u8]) -> io::Result<(bool, &[u8], usize)> {
    let huffman = buf.first().is_some_and(|b| b & 0x80 != 0);
    let (len, n) = hpack_int(buf, 7)?;
    let end = n
        .checked_add(len)
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| protocol_error("truncated header block"))?;
    Ok((huffman, &buf[n..end], end))
}

fn string_value(huffman: bool, octets: &[u8]) -> io::Result<Cow<'_, [u8]>> {
    if !huffman {
        return Ok(Cow::Borrowed(octets));
    }
    HuffmanDecoder::new()
        .decode(octets)
        .map(Cow::Owned)
        .map_err(|e| protocol_error(&format!("bad Huffman string in a header block ({e})")))
}

fn put_int(out: &mut Vec<u8>, first_bits: u8, prefix: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first_bits | value as u8);
        return;
    }
    out.push(first_bits | max as u8);
    let mut v = value - max;
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Splits a HEADERS payload into its priority fields (if any) and header block fragment, without
/// padding.
fn headers_payload(flags: u8, payload: &[u8]) -> io::Result<(Option<[u8; 5]>, Vec<u8>)> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&n, rest) = p
            .split_first()
            .ok_or_else(|| protocol_error("padded HEADERS without a pad length"))?;
        pad = usize::from(n);
        p = rest;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        if p.len() < 5 {
            return Err(protocol_error("HEADERS too short for its priority fields"));
        }
        let mut prio = [0u8; 5];
        prio.copy_from_slice(&p[..5]);
        priority = Some(prio);
        p = &p[5..];
    }
    if pad > p.len() {
        return Err(protocol_error("HEADERS padding longer than the frame"));
    }
    Ok((priority, p[..p.len() - pad].to_vec()))
}

fn put_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Writes a HEADERS frame, and CONTINUATION frames if the block does not fit in one.
fn write_header_block(out: &mut Vec<u8>, flags: u8, stream: u32, priority: Option<[u8; 5]>, block: &[u8]) {
    let first_room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let end = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
    let prio_len = priority.map_or(0, |_| 5);
    put_frame_header(out, prio_len + first.len(), FRAME_HEADERS, flags | end, stream);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        let end = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), FRAME_CONTINUATION, end, stream);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::{Decoder, Encoder};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    type Frames = Vec<(u8, u8, Vec<u8>)>;
    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

    /// Splits the forwarded bytes into frames and decodes each header block as the server would.
    fn server_view(bytes: &[u8]) -> (Frames, Vec<HeaderList>) {
        assert_eq!(&bytes[..24], PREFACE);
        let mut frames = Vec::new();
        let mut blocks = Vec::new();
        let mut decoder = Decoder::new();
        let mut rest = &bytes[24..];
        let mut pending = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let payload = rest[9..9 + len].to_vec();
            if kind == FRAME_HEADERS || kind == FRAME_CONTINUATION {
                let start = if kind == FRAME_HEADERS && flags & FLAG_PRIORITY != 0 {
                    5
                } else {
                    0
                };
                pending.extend_from_slice(&payload[start..]);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(decoder.decode(&pending).unwrap());
                    pending.clear();
                }
            }
            frames.push((kind, flags, payload));
            rest = &rest[9 + len..];
        }
        (frames, blocks)
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/v1beta1.KeyManagementService/Encrypt".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
            (b"te".to_vec(), b"trailers".to_vec()),
        ]
    }

    /// The server's view of `input`, fed in chunks of `chunk` bytes.
    fn forward_in(input: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        let mut rw = Rewriter::default();
        let (mut pending, mut out) = (Vec::new(), Vec::new());
        for piece in input.chunks(chunk.max(1)) {
            pending.extend_from_slice(piece);
            rw.feed(&mut pending, &mut out)?;
        }
        rw.finish(&pending)?;
        Ok(out)
    }

    async fn forward(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let whole = forward_in(&input, input.len());
        // However the bytes arrive, the server sees the same thing.
        for chunk in [1, 7, 100] {
            assert_eq!(
                forward_in(&input, chunk).map_err(|e| e.to_string()),
                whole.as_ref().map(Vec::clone).map_err(|e| e.to_string())
            );
        }
        // And through the AsyncRead wrapper.
        let mut conn = FixedConn::new(&input[..]);
        let mut via_conn = Vec::new();
        let read = tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut via_conn).await;
        assert_eq!(read.is_ok(), whole.is_ok());
        if let Ok(expected) = &whole {
            assert_eq!(&via_conn, expected);
        }
        whole
    }

    #[tokio::test]
    async fn socket_path_authority_becomes_localhost_across_requests_sharing_hpack_state() {
        // The client's encoder indexes headers, so the second request refers to table entries.
        let mut client = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for stream in [1u32, 3] {
            let req = request(b"/run/phylax/kms.sock");
            let block = client.encode(req.iter().map(|(n, v)| (&n[..], &v[..])));
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\x02hi"));
        }
        let (frames, blocks) = server_view(&forward(input).await.unwrap());
        assert_eq!(blocks.len(), 2);
        for block in &blocks {
            assert_eq!(block[3].0, b":authority");
            assert!(
                Authority::try_from(block[3].1.as_slice()).is_ok(),
                "{:?}",
                block[3]
            );
            assert_eq!(
                block[3].1.len(),
                b"/run/phylax/kms.sock".len(),
                "same size in the table"
            );
            assert_eq!(block[2].1, b"/v1beta1.KeyManagementService/Encrypt");
        }
        assert_eq!(
            frames.iter().filter(|f| f.0 == 0x0).count(),
            2,
            "DATA frames pass through"
        );
        assert!(frames.iter().any(|f| f.0 == 0x0 && f.2 == b"\0\0\0\0\x02hi"));
    }

    #[tokio::test]
    async fn valid_authority_is_kept_and_padding_priority_continuation_are_handled() {
        let mut client = Encoder::new();
        let req = request(b"localhost:8080");
        let block = client.encode(req.iter().map(|(n, v)| (&n[..], &v[..])));
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 1, 16]); // priority
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &payload,
        ));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b));
        let (frames, blocks) = server_view(&forward(input).await.unwrap());
        assert_eq!(blocks[0][3].1, b"localhost:8080");
        let (_, flags, payload) = &frames[0];
        assert_eq!(*flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
        assert_eq!(&payload[..5], &[0, 0, 0, 1, 16]);
    }

    #[tokio::test]
    async fn malformed_input_closes_the_connection() {
        let mut bad = PREFACE.to_vec();
        bad.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b"x"));
        assert!(forward(bad).await.is_err());

        let mut bad = PREFACE.to_vec();
        bad.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff],
        ));
        assert!(forward(bad).await.is_err(), "undecodable HPACK");

        let mut bad = PREFACE.to_vec();
        bad.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[200, 1, 2],
        ));
        assert!(forward(bad).await.is_err(), "padding beyond the frame");

        let mut bad = PREFACE.to_vec();
        bad.extend_from_slice(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]);
        assert!(forward(bad).await.is_err(), "oversized frame");

        let mut bad = PREFACE.to_vec();
        bad.extend(frame(FRAME_HEADERS, 0, 1, &[0x82]));
        assert!(forward(bad).await.is_err(), "EOF inside a header block");
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_valid_passes_through_unchanged() {
        let mut client = Encoder::new();
        let mut input = PREFACE.to_vec();
        for stream in [1u32, 3] {
            let req = request(b"localhost");
            let block = client.encode(req.iter().map(|(n, v)| (&n[..], &v[..])));
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\x02hi"));
        }
        assert_eq!(forward(input.clone()).await.unwrap(), input);
    }

    #[test]
    fn splice_reads_huffman_and_multi_byte_integers() {
        // RFC 7541 C.4.1: `:authority: www.example.com`, Huffman-coded, incremental indexing.
        let huffman = [
            0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut out = Vec::new();
        assert!(
            !splice_block(&huffman, &mut out).unwrap(),
            "a valid authority is kept"
        );
        assert_eq!(out, huffman);

        // A raw socket path longer than 127 bytes (a multi-byte length), without indexing.
        let path = format!("/{}", "p".repeat(150));
        let mut block = vec![0x01];
        put_int(&mut block, 0x00, 7, path.len());
        block.extend_from_slice(path.as_bytes());
        block.push(0x82); // :method GET, indexed
        let mut out = Vec::new();
        assert!(splice_block(&block, &mut out).unwrap());
        let headers = Decoder::new().decode(&out).unwrap();
        assert_eq!(headers[0], (b":authority".to_vec(), vec![b'x'; path.len()]));
        assert_eq!(headers[1], (b":method".to_vec(), b"GET".to_vec()));

        for bad in [
            &[0x41, 0x85, 0xff][..],
            &[0x7f][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..],
        ] {
            assert!(splice_block(bad, &mut Vec::new()).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn not_http2_passes_through_for_the_server_to_refuse() {
        let out = forward(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await.unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let block = vec![0x82u8; MAX_FRAME * 2 + 10];
        let mut out = Vec::new();
        write_header_block(&mut out, 0, 1, None, &block);
        assert_eq!(out.len(), block.len() + 3 * 9);
        assert_eq!(out[4], 0, "first frame does not end the block");
        assert_eq!(out[3 + 9 + MAX_FRAME], FRAME_CONTINUATION);
    }
}
