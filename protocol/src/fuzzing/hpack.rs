//! konnq's HPACK decoder against an independent one (loona-hpack's):
//! header blocks that both accept must decode to the same fields, and a
//! block only one of them accepts must be one of the differences listed on
//! [`Verdict`].

use crate::hpack::table::ENTRY_OVERHEAD;
use crate::hpack::{DecodeError, Decoder, DEFAULT_TABLE_SIZE};

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// SETTINGS_HEADER_TABLE_SIZE values the first input byte picks from.
const TABLE_SIZES: [usize; 8] = [0, 64, 256, 1_024, DEFAULT_TABLE_SIZE, 8_192, 16_384, 65_536];
/// First index of the dynamic table (§2.3.3).
const FIRST_DYNAMIC: usize = 62;

/// How one block went for both decoders.
enum Verdict {
    /// Both accepted it, with the same fields.
    Same,
    /// Both rejected it; the tables may now differ from the peer's.
    BothRejected,
    /// konnq accepts a block of nothing but table size updates; loona
    /// rejects any block that ends with one (`SizeUpdateAtEnd`), which
    /// RFC 7541 §4.2 does not ask for. Both applied the updates.
    OnlySizeUpdates,
    /// konnq refuses a size update after a field, as §4.2 requires ("at the
    /// beginning of the first header block following the change"); loona
    /// takes one anywhere.
    LateSizeUpdate,
}

/// Input: one byte choosing the largest table size the peer may set, then
/// header blocks, each a length byte and that many bytes (the last one
/// whatever is left). The blocks go through one decoder of each kind, as
/// the blocks of one HTTP/2 connection would.
pub fn hpack(data: &[u8]) {
    let Some((&size, mut rest)) = data.split_first() else { return };
    let max_allowed = TABLE_SIZES[usize::from(size) % TABLE_SIZES.len()];
    let mut ours = Decoder::new(max_allowed);
    let mut theirs = loona_hpack::Decoder::new();
    theirs.set_max_allowed_table_size(max_allowed);
    theirs.set_max_table_size(DEFAULT_TABLE_SIZE.min(max_allowed));
    while let Some((&len, tail)) = rest.split_first() {
        let (block, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        match compare(&mut ours, &mut theirs, block) {
            Verdict::Same | Verdict::OnlySizeUpdates => {}
            Verdict::BothRejected | Verdict::LateSizeUpdate => return,
        }
    }
    tables_match(&mut ours, &mut theirs, max_allowed);
}

fn compare(ours: &mut Decoder, theirs: &mut loona_hpack::Decoder, block: &[u8]) -> Verdict {
    let mut our_fields = Fields::new();
    let our_result = ours.decode(block, |n, v| our_fields.push((n.to_vec(), v.to_vec())));
    let their_result = theirs.decode(block);
    match (our_result, their_result) {
        (Ok(()), Ok(their_fields)) => {
            assert_eq!(our_fields, their_fields, "the decoders disagree on {block:02x?}");
            Verdict::Same
        }
        (Err(e), Err(_)) => {
            drop(e.to_string());
            Verdict::BothRejected
        }
        (Ok(()), Err(loona_hpack::decoder::DecoderError::SizeUpdateAtEnd)) if our_fields.is_empty() => {
            Verdict::OnlySizeUpdates
        }
        (Err(DecodeError::LateTableSizeUpdate), Ok(_)) => Verdict::LateSizeUpdate,
        (ours, theirs) => panic!("konnq: {ours:?}, loona-hpack: {theirs:?}, block {block:02x?}"),
    }
}

/// Both dynamic tables hold the same entries: a block naming each of
/// konnq's entries decodes the same in both, and the next index is out of
/// range in both. konnq's table accounts its size as §4.1 does.
fn tables_match(ours: &mut Decoder, theirs: &mut loona_hpack::Decoder, max_allowed: usize) {
    let entries = ours.table().len();
    let size = ours.table().size();
    let mut every_entry = Vec::new();
    for index in FIRST_DYNAMIC..FIRST_DYNAMIC + entries {
        indexed(index, &mut every_entry);
    }
    let Verdict::Same = compare(ours, theirs, &every_entry) else {
        panic!("the tables differ: {entries} entries in konnq's");
    };
    let mut fields = Fields::new();
    ours.decode(&every_entry, |n, v| fields.push((n.to_vec(), v.to_vec()))).expect("decoded once already");
    let counted: usize = fields.iter().map(|(n, v)| n.len() + v.len() + ENTRY_OVERHEAD).sum();
    assert_eq!(size, counted, "table size accounting");
    assert!(size <= max_allowed, "table of {size} bytes above the allowed {max_allowed}");
    let mut past_the_end = Vec::new();
    indexed(FIRST_DYNAMIC + entries, &mut past_the_end);
    let Verdict::BothRejected = compare(ours, theirs, &past_the_end) else {
        panic!("loona-hpack's table has more than konnq's {entries} entries");
    };
}

/// Appends an indexed field representation (§6.1) of `index`.
fn indexed(index: usize, out: &mut Vec<u8>) {
    if index < 0x7f {
        out.push(0x80 | index as u8);
        return;
    }
    out.push(0xff);
    let mut rest = index - 0x7f;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}
