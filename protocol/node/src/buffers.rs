//! Spare payload buffers: the engine writes transmits and delivered packets into them, and
//! whoever is done with a payload gives it back, so a steady stream allocates nothing.

/// Buffers kept for reuse at most.
const MAX_BUFFERS: usize = 1024;
/// The smallest buffer made: a whole 1280-byte packet plus WireGuard's overhead, so a recycled
/// buffer fits any datagram of the tunnel's MTU without growing.
const MIN_SIZE: usize = 2048;
/// The largest buffer kept: at most `MAX_BUFFERS × MAX_SIZE` bytes (4 MiB) wait for reuse,
/// whatever sizes pass through.
const MAX_SIZE: usize = 4096;

/// A bounded stack of spare buffers.
#[derive(Debug, Default)]
pub struct Buffers {
    spare: Vec<Vec<u8>>,
}

impl Buffers {
    /// A buffer holding a copy of `bytes`: a spare one when there is one.
    pub fn take(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut b = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(bytes.len().max(MIN_SIZE)));
        b.extend_from_slice(bytes);
        b
    }

    /// Keeps `buf` for reuse (cleared), unless the stack is full or its size is out of range.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        let size = buf.capacity();
        if self.spare.len() < MAX_BUFFERS && (MIN_SIZE..=MAX_SIZE).contains(&size) {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// A spare buffer, if any (empty, with its capacity).
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        self.spare.pop()
    }

    /// How many spare buffers are held.
    pub fn len(&self) -> usize {
        self.spare.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.spare.is_empty()
    }
}
