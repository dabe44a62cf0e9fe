//! HPACK header block decoding (RFC 7541), sans-IO.
//!
//! [`Decoder`] keeps the peer's dynamic table across header blocks and hands
//! each decoded field to a callback as borrowed slices: indexed fields point
//! into the static or dynamic table, literal strings into the block itself or
//! (Huffman-coded ones) into scratch buffers the decoder reuses, so a block
//! allocates only for the entries it adds to the dynamic table.
//!
//! - [`huffman`]: the Huffman code, decoded by a table built at compile time.
//! - [`table`]: the static table and the dynamic table with its eviction.
//!
//! konnq only decodes HPACK: the server's HTTP/2 frontend encodes its few
//! response fields as plain literals, which needs no encoder state. Every malformed input is an error naming the violation; nothing
//! here panics on input.

pub mod huffman;
pub mod table;

pub use huffman::HuffmanError;
use table::DynamicTable;

/// Initial dynamic table size: the default SETTINGS_HEADER_TABLE_SIZE.
pub const DEFAULT_TABLE_SIZE: usize = 4_096;
/// Continuation bytes an integer may have after its prefix; 4 carry 28 bits,
/// far more than any index, size or string length a header block can hold.
const MAX_INT_CONTINUATIONS: usize = 4;

/// A header block the decoder cannot accept (RFC 7541 §§4–6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("header block ends inside an integer")]
    TruncatedInteger,
    #[error("integer takes more than {MAX_INT_CONTINUATIONS} continuation bytes")]
    IntegerTooLong,
    #[error("string of {len} bytes runs past the end of the header block ({left} bytes left)")]
    TruncatedString { len: usize, left: usize },
    #[error("index {index} is beyond the static table and the {dynamic_len} dynamic entries")]
    IndexOutOfBounds { index: usize, dynamic_len: usize },
    #[error("dynamic table size update to {size} above the allowed {max}")]
    TableSizeTooLarge { size: usize, max: usize },
    #[error("dynamic table size update after a header field")]
    LateTableSizeUpdate,
    #[error("bad Huffman string: {0}")]
    Huffman(#[from] HuffmanError),
}

/// Decodes a peer's header blocks, tracking its dynamic table.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The largest size a dynamic table size update may set.
    max_allowed: usize,
    /// Decoded Huffman strings and names copied out of the table.
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Decoder {
    /// A decoder whose table starts at [`DEFAULT_TABLE_SIZE`] (or
    /// `max_allowed` if smaller) and that lets the peer resize it up to
    /// `max_allowed`: the SETTINGS_HEADER_TABLE_SIZE we advertise, or the
    /// default if larger, since the peer may use that before it has seen
    /// our SETTINGS.
    pub fn new(max_allowed: usize) -> Decoder {
        Decoder {
            table: DynamicTable::new(DEFAULT_TABLE_SIZE.min(max_allowed)),
            max_allowed,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// The dynamic table as it stands after the blocks decoded so far.
    pub fn table(&self) -> &DynamicTable {
        &self.table
    }

    /// Decodes one complete header block, calling `on_field(name, value)`
    /// for each field in order.
    ///
    /// After an error the dynamic table may be out of step with the peer's;
    /// the connection must be closed (RFC 9113 §4.3).
    pub fn decode(&mut self, mut block: &[u8], mut on_field: impl FnMut(&[u8], &[u8])) -> Result<(), DecodeError> {
        let mut seen_field = false;
        while let Some(&first) = block.first() {
            match first {
                // 1xxxxxxx: indexed field (§6.1).
                0x80..=0xff => {
                    let index = decode_int(&mut block, 7)?;
                    let (name, value) = self.lookup(index)?;
                    on_field(name, value);
                }
                // 01xxxxxx: literal with incremental indexing (§6.2.1).
                0x40..=0x7f => self.literal(&mut block, 6, true, &mut on_field)?,
                // 001xxxxx: dynamic table size update (§6.3).
                0x20..=0x3f => {
                    if seen_field {
                        return Err(DecodeError::LateTableSizeUpdate);
                    }
                    let size = decode_int(&mut block, 5)?;
                    if size > self.max_allowed {
                        return Err(DecodeError::TableSizeTooLarge { size, max: self.max_allowed });
                    }
                    self.table.set_max_size(size);
                    continue;
                }
                // 0001xxxx never indexed, 0000xxxx without indexing (§6.2.2-3).
                0x00..=0x1f => self.literal(&mut block, 4, false, &mut on_field)?,
            }
            seen_field = true;
        }
        Ok(())
    }

    fn lookup(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        lookup(&self.table, index)
    }

    /// A literal field whose name index has a `prefix`-bit prefix.
    fn literal(
        &mut self,
        block: &mut &[u8],
        prefix: u32,
        add_to_table: bool,
        on_field: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<(), DecodeError> {
        let name_index = decode_int(block, prefix)?;
        let name: &[u8] = if name_index == 0 {
            decode_string(block, &mut self.name)?
        } else {
            // Copied: inserting the field below may evict the entry it names.
            let (name, _) = lookup(&self.table, name_index)?;
            self.name.clear();
            self.name.extend_from_slice(name);
            &self.name
        };
        let value = decode_string(block, &mut self.value)?;
        on_field(name, value);
        if add_to_table {
            self.table.insert(name, value);
        }
        Ok(())
    }
}

fn lookup(table: &DynamicTable, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    table.get(index).ok_or(DecodeError::IndexOutOfBounds { index, dynamic_len: table.len() })
}

/// Reads an integer with an N-bit prefix (§5.1) off the front of `block`.
fn decode_int(block: &mut &[u8], prefix: u32) -> Result<usize, DecodeError> {
    let (&first, mut rest) = block.split_first().ok_or(DecodeError::TruncatedInteger)?;
    let limit = (1usize << prefix) - 1;
    let mut value = usize::from(first) & limit;
    if value == limit {
        let mut shift = 0;
        loop {
            let (&byte, tail) = rest.split_first().ok_or(DecodeError::TruncatedInteger)?;
            rest = tail;
            if shift == 7 * MAX_INT_CONTINUATIONS {
                return Err(DecodeError::IntegerTooLong);
            }
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    *block = rest;
    Ok(value)
}

/// Reads a string literal (§5.2) off the front of `block`: borrowed from the
/// block if plain, decoded into `scratch` if Huffman-coded.
fn decode_string<'b: 's, 's>(block: &mut &'b [u8], scratch: &'s mut Vec<u8>) -> Result<&'s [u8], DecodeError> {
    let huffman = block.first().is_some_and(|&b| b & 0x80 != 0);
    let len = decode_int(block, 7)?;
    if len > block.len() {
        return Err(DecodeError::TruncatedString { len, left: block.len() });
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    if !huffman {
        return Ok(raw);
    }
    scratch.clear();
    huffman::decode(raw, scratch)?;
    Ok(scratch)
}

#[cfg(test)]
mod tests;
