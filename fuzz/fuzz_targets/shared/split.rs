//! What the targets that feed a decoder in reads share.

/// `stream` cut into reads of 1 to 64 bytes, the lengths drawn from `seed`; seed 0 keeps it in
/// one piece.
pub fn chunks(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = if seed == 0 { rest.len() } else { 1 + (state >> 16) as usize % 64 };
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}
