//! The 20-byte STUN header: message type (method + class), length, magic cookie, transaction ID.

use core::fmt;

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header in bytes.
pub const HEADER_LEN: usize = 20;

/// The class of a message: request, indication, success or error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// A request, answered by a success or error response.
    Request,
    /// A one-way indication; never answered and never retransmitted.
    Indication,
    /// A success response.
    Success,
    /// An error response carrying ERROR-CODE.
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }

    fn from_bits(bits: u16) -> Self {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// A 12-bit STUN method. Binding (0x001) is the only one STUN itself defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(u16);

impl Method {
    /// The Binding method (0x001).
    pub const BINDING: Method = Method(0x001);

    /// A method from its 12-bit number; higher bits are masked off.
    pub const fn new(value: u16) -> Self {
        Method(value & 0x0FFF)
    }

    /// The method number.
    pub const fn value(self) -> u16 {
        self.0
    }
}

/// Method and class as packed into the 14-bit message type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// The method, e.g. [`Method::BINDING`].
    pub method: Method,
    /// The class.
    pub class: Class,
}

impl MessageType {
    /// Binding request (0x0001).
    pub const BINDING_REQUEST: MessageType = MessageType::new(Method::BINDING, Class::Request);
    /// Binding success response (0x0101).
    pub const BINDING_SUCCESS: MessageType = MessageType::new(Method::BINDING, Class::Success);
    /// Binding error response (0x0111).
    pub const BINDING_ERROR: MessageType = MessageType::new(Method::BINDING, Class::Error);
    /// Binding indication (0x0011).
    pub const BINDING_INDICATION: MessageType =
        MessageType::new(Method::BINDING, Class::Indication);

    /// Pairs a method with a class.
    pub const fn new(method: Method, class: Class) -> Self {
        MessageType { method, class }
    }

    /// The 16-bit wire value (top two bits zero).
    pub fn to_u16(self) -> u16 {
        let m = self.method.0;
        let c = self.class.bits();
        (m & 0x000F)
            | ((m & 0x0070) << 1)
            | ((m & 0x0F80) << 2)
            | ((c & 1) << 4)
            | (((c >> 1) & 1) << 8)
    }

    /// Decodes the wire value; the top two bits are ignored (the parser checks them).
    pub fn from_u16(t: u16) -> Self {
        let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
        let class = ((t >> 4) & 1) | ((t >> 7) & 2);
        MessageType {
            method: Method(method),
            class: Class::from_bits(class),
        }
    }
}

/// The 96-bit transaction ID that ties responses to requests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// Draws a fresh ID from the given random source.
    pub fn random<R: rand_core::RngCore + ?Sized>(rng: &mut R) -> Self {
        let mut id = [0u8; 12];
        rng.fill_bytes(&mut id);
        TransactionId(id)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_type_values_match_rfc() {
        assert_eq!(MessageType::BINDING_REQUEST.to_u16(), 0x0001);
        assert_eq!(MessageType::BINDING_INDICATION.to_u16(), 0x0011);
        assert_eq!(MessageType::BINDING_SUCCESS.to_u16(), 0x0101);
        assert_eq!(MessageType::BINDING_ERROR.to_u16(), 0x0111);
        // TURN Allocate, from the reference table.
        let alloc = Method::new(0x003);
        assert_eq!(MessageType::new(alloc, Class::Success).to_u16(), 0x0103);
        assert_eq!(MessageType::new(alloc, Class::Error).to_u16(), 0x0113);
    }

    #[test]
    fn type_round_trips_for_every_method_and_class() {
        for m in 0..0x1000u16 {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = MessageType::new(Method::new(m), class);
                let wire = t.to_u16();
                assert_eq!(wire & 0xC000, 0);
                assert_eq!(MessageType::from_u16(wire), t);
            }
        }
    }
}
