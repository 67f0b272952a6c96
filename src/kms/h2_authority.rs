//! Accept the `:authority` that older API servers send.
//!
//! kube-apiserver before 1.32 dials the plugin with grpc-go and the bare socket path as target, so
//! every request carries `:authority: /run/phylax/kms.sock`. That is not a valid URI authority, and
//! the h2 crate under tonic resets such streams with PROTOCOL_ERROR before any handler runs (a
//! known interoperability gap, also hit by other Rust KMS plugins and CSI drivers).
//!
//! This shim sits between the accepted socket and the gRPC server. It passes every frame through
//! untouched except request header blocks, which it decodes with the client's HPACK state and
//! re-encodes for the server, replacing an invalid authority with `localhost`. Nothing is buffered
//! beyond one frame (or one header block), and malformed input closes the connection.

use std::io;

use axum::http::uri::Authority;
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Copies the client's side of an HTTP/2 connection to the server, fixing request authorities.
pub async fn forward_client_frames<R, W>(mut from_client: R, mut to_server: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    from_client.read_exact(&mut preface).await?;
    to_server.write_all(&preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: let the server answer it as it would.
        tokio::io::copy(&mut from_client, &mut to_server).await?;
        return to_server.shutdown().await;
    }
    let mut decoder = Decoder::new();
    // The server advertises no larger table (h2's default is 4096); this is a safety bound.
    decoder.set_max_allowed_table_size(64 * 1024);
    let mut encoder = Encoder::new();
    let mut out = Vec::with_capacity(MAX_FRAME + 9);
    while let Some((kind, flags, stream, payload)) = read_frame(&mut from_client).await? {
        out.clear();
        match kind {
            FRAME_HEADERS => {
                let (priority, mut block) = headers_payload(flags, &payload)?;
                let mut end_headers = flags & FLAG_END_HEADERS != 0;
                while !end_headers {
                    let Some((k, f, s, more)) = read_frame(&mut from_client).await? else {
                        return Err(protocol_error("connection closed inside a header block"));
                    };
                    if k != FRAME_CONTINUATION || s != stream {
                        return Err(protocol_error("header block interrupted by another frame"));
                    }
                    if block.len() + more.len() > MAX_HEADER_BLOCK {
                        return Err(protocol_error("header block too large"));
                    }
                    block.extend_from_slice(&more);
                    end_headers = f & FLAG_END_HEADERS != 0;
                }
                let mut headers = decoder
                    .decode(&block)
                    .map_err(|e| protocol_error(&format!("undecodable header block ({e:?})")))?;
                fix_authority(&mut headers);
                let mut encoded = Vec::with_capacity(block.len() + 16);
                encoder.encode_into(headers.iter().map(|(n, v)| (&n[..], &v[..])), &mut encoded)?;
                write_header_block(
                    &mut out,
                    flags & (FLAG_END_STREAM | FLAG_PRIORITY),
                    stream,
                    priority,
                    &encoded,
                );
            }
            FRAME_CONTINUATION => return Err(protocol_error("CONTINUATION without HEADERS")),
            _ => {
                put_frame_header(&mut out, payload.len(), kind, flags, stream);
                out.extend_from_slice(&payload);
            }
        }
        to_server.write_all(&out).await?;
    }
    to_server.shutdown().await
}

/// Replaces an authority that is not a valid URI authority (a socket path) with `localhost`.
pub fn fix_authority(headers: &mut [(Vec<u8>, Vec<u8>)]) {
    for (name, value) in headers.iter_mut() {
        if name.as_slice() == b":authority" && Authority::try_from(value.as_slice()).is_err() {
            *value = b"localhost".to_vec();
        }
    }
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(u8, u8, u32, Vec<u8>)>> {
    let mut head = [0u8; 9];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    if len > MAX_FRAME {
        return Err(protocol_error("frame larger than the advertised maximum"));
    }
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[3], head[4], stream, payload)))
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

    async fn forward(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        forward_client_frames(&input[..], &mut out).await?;
        Ok(out)
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
            assert_eq!(block[3], (b":authority".to_vec(), b"localhost".to_vec()));
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
