//! Length-prefixed framing for stream transports (TCP): `u32 big-endian length || frame`.
//! Pure code, no I/O, shared by the node's TCP transport and the client: the caller feeds
//! whatever bytes arrived and takes out whole frames. Normative text: `specs/tcp.md`.

use crate::limits::FRAME_BYTES_MAX;

/// Bytes of the length prefix.
pub const PREFIX_BYTES: usize = 4;

/// Why a stream can no longer be read: the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("frame of {len} bytes announced; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame announced")]
    Empty,
}

/// Prefixes one encoded frame for a stream.
pub fn encode(frame: &[u8]) -> Result<Vec<u8>, FramingError> {
    if frame.is_empty() {
        return Err(FramingError::Empty);
    }
    if frame.len() > FRAME_BYTES_MAX {
        return Err(FramingError::TooLarge { len: frame.len(), max: FRAME_BYTES_MAX });
    }
    let mut out = Vec::with_capacity(PREFIX_BYTES + frame.len());
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
    Ok(out)
}

/// Reassembles frames from a byte stream. Never buffers more than one frame's worth
/// (`PREFIX_BYTES + FRAME_BYTES_MAX`) plus what the caller pushes at once.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or an error once the
    /// announced length is invalid (the stream cannot be resynchronised).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        if self.buf.len() < PREFIX_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..PREFIX_BYTES].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Err(FramingError::Empty);
        }
        if len > FRAME_BYTES_MAX {
            return Err(FramingError::TooLarge { len, max: FRAME_BYTES_MAX });
        }
        if self.buf.len() < PREFIX_BYTES + len {
            return Ok(None);
        }
        let frame = self.buf[PREFIX_BYTES..PREFIX_BYTES + len].to_vec();
        self.buf.drain(..PREFIX_BYTES + len);
        Ok(Some(frame))
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let frames: Vec<Vec<u8>> = vec![vec![1], vec![2; 300], vec![3; FRAME_BYTES_MAX]];
        let stream: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap()).collect();
        for chunk in [1, 3, 7, 1000, stream.len()] {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, frames);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FramingError::Empty));
        let mut d = Decoder::new();
        d.push(&((FRAME_BYTES_MAX as u32 + 1).to_be_bytes()));
        assert_eq!(d.next_frame(), Err(FramingError::TooLarge { len: FRAME_BYTES_MAX + 1, max: FRAME_BYTES_MAX }));
        assert_eq!(encode(&[]), Err(FramingError::Empty));
        assert!(encode(&vec![0; FRAME_BYTES_MAX + 1]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut d = Decoder::new();
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_frame() {}
        }
    }
}
