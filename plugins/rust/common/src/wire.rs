//! The protobuf wire format, read and written by hand: fields one by one, with their bytes
//! (tag included) and their value, and varints written back. Enough for a plugin to find the
//! few fields of a protocol it knows and to rewrite one while copying every other field byte
//! for byte, unknown fields included, without `prost` (which would triple a plugin's size).
//!
//! It checks the framing only (varints, lengths, field numbers, wire types); what a field must
//! hold is the plugin's to check.

/// Protobuf wire types.
pub const VARINT: u8 = 0;
/// A 64-bit fixed-width value.
pub const FIXED64: u8 = 1;
/// A length-delimited value: bytes, a string, a nested message, a packed list.
pub const LENGTH_DELIMITED: u8 = 2;
/// A 32-bit fixed-width value.
pub const FIXED32: u8 = 5;

/// Why bytes are not a well-formed message, and at which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    /// What is wrong.
    pub kind: WireErrorKind,
    /// Where the field (or varint) that is wrong starts.
    pub at: usize,
}

/// What is wrong with a message's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireErrorKind {
    /// The message ends inside a varint.
    TruncatedVarint,
    /// A varint longer than 64 bits.
    VarintOverflow,
    /// A field's value runs past the end.
    PastTheEnd,
    /// Field number 0 or above 2^29 - 1.
    BadFieldNumber(u64),
    /// Wire types 3 and 4 (groups, unused by proto3) and 6, 7 (undefined).
    BadWireType(u8),
}

/// One field of a message.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// Its number.
    pub number: u32,
    /// Its wire type.
    pub wire: u8,
    /// The value of a varint field.
    pub varint: Option<u64>,
    /// The value of a length-delimited field (without its length).
    pub bytes: Option<&'a [u8]>,
    /// Where the field's bytes (tag included) start and end in the message.
    pub start: usize,
    /// See `start`.
    pub end: usize,
}

/// Reads the fields of one message in order.
pub struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let start = self.at;
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(WireError {
                    kind: WireErrorKind::TruncatedVarint,
                    at: start,
                });
            };
            self.at += 1;
            // The tenth byte holds the 64th bit only.
            if shift == 63 && byte > 1 {
                return Err(WireError {
                    kind: WireErrorKind::VarintOverflow,
                    at: start,
                });
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError {
            kind: WireErrorKind::VarintOverflow,
            at: start,
        })
    }

    /// Moves past `len` bytes of a field's value; returns them.
    fn skip(&mut self, len: u64) -> Result<&'a [u8], WireError> {
        let start = self.at;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= self.bytes.len())
            .ok_or(WireError {
                kind: WireErrorKind::PastTheEnd,
                at: start,
            })?;
        self.at = end;
        Ok(&self.bytes[start..end])
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<Field<'a>>, WireError> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let start = self.at;
        let tag = self.varint()?;
        let number = tag >> 3;
        let wire = (tag & 7) as u8;
        let number = match u32::try_from(number) {
            Ok(n) if (1..(1 << 29)).contains(&n) => n,
            _ => {
                return Err(WireError {
                    kind: WireErrorKind::BadFieldNumber(number),
                    at: start,
                });
            }
        };
        let (mut varint, mut bytes) = (None, None);
        match wire {
            VARINT => varint = Some(self.varint()?),
            FIXED64 => {
                self.skip(8)?;
            }
            LENGTH_DELIMITED => {
                let len = self.varint()?;
                bytes = Some(self.skip(len)?);
            }
            FIXED32 => {
                self.skip(4)?;
            }
            other => {
                return Err(WireError {
                    kind: WireErrorKind::BadWireType(other),
                    at: start,
                });
            }
        }
        Ok(Some(Field {
            number,
            wire,
            varint,
            bytes,
            start,
            end: self.at,
        }))
    }
}

/// Appends `value` as a protobuf varint.
pub fn push_varint(out: &mut alloc::vec::Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a field's tag.
pub fn push_tag(out: &mut alloc::vec::Vec<u8>, number: u32, wire: u8) {
    push_varint(out, (u64::from(number) << 3) | u64::from(wire));
}
