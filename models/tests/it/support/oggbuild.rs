//! Builds Ogg/Opus streams byte by byte (RFC 3533 pages, RFC 7845 headers), for the audio tests
//! and the `audio_bomb` example: no encoder tools needed, and hostile layouts are easy to make.
#![allow(dead_code)]

/// The Ogg page CRC (polynomial 0x04c11db7, no reflection, zero init).
pub fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

pub const BOS: u8 = 0x02;
pub const EOS: u8 = 0x04;
const SERIAL: u32 = 0x5A4D_5241;

/// One page holding `packets` whole (at most 255 lacing values in all).
pub fn page(flags: u8, granule: u64, seq: u32, packets: &[&[u8]]) -> Vec<u8> {
    let mut lacing = Vec::new();
    for p in packets {
        lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
        lacing.push((p.len() % 255) as u8);
    }
    assert!(lacing.len() <= 255, "too many segments for one page");
    let mut b =
        Vec::with_capacity(27 + lacing.len() + packets.iter().map(|p| p.len()).sum::<usize>());
    b.extend_from_slice(b"OggS");
    b.push(0);
    b.push(flags);
    b.extend_from_slice(&granule.to_le_bytes());
    b.extend_from_slice(&SERIAL.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.push(lacing.len() as u8);
    b.extend_from_slice(&lacing);
    for p in packets {
        b.extend_from_slice(p);
    }
    let crc = ogg_crc(&b);
    b[22..26].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The OpusHead and OpusTags pages of a mono stream.
pub fn opus_headers(pre_skip: u16) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(1); // channels
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // mapping family
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&4u32.to_le_bytes());
    tags.extend_from_slice(b"test");
    tags.extend_from_slice(&0u32.to_le_bytes());
    let mut b = page(BOS, 0, 0, &[&head]);
    b.extend(page(0, 0, 1, &[&tags]));
    b
}

/// The amplifying file: OpusHead, OpusTags, then pages of 255 zero-length packets (282 bytes a
/// page, each packet concealed as a lost 20 ms frame) up to about `size` bytes.
pub fn empty_packet_bomb(size: usize) -> Vec<u8> {
    let mut b = opus_headers(0);
    let empty: Vec<&[u8]> = vec![&[]; 255];
    let mut seq = 2;
    let mut granule = 0u64;
    while b.len() + 282 <= size {
        granule += 255 * 960;
        let last = b.len() + 2 * 282 > size;
        b.extend(page(if last { EOS } else { 0 }, granule, seq, &empty));
        seq += 1;
    }
    b
}

/// A mono Ogg/Opus stream of `packets` (20 ms each), 50 packets a page, with true granules
/// (which count the pre-skip: the stream holds `packets * 320 - pre_skip / 3` samples at 16k).
pub fn opus_stream(pre_skip: u16, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut b = opus_headers(pre_skip);
    let chunks: Vec<_> = packets.chunks(50).collect();
    let mut granule = 0u64;
    for (i, chunk) in chunks.iter().enumerate() {
        granule += 960 * chunk.len() as u64;
        let refs: Vec<&[u8]> = chunk.iter().map(|p| p.as_slice()).collect();
        let flags = if i + 1 == chunks.len() { EOS } else { 0 };
        b.extend(page(flags, granule, 2 + i as u32, &refs));
    }
    b
}

/// A PCM WAV file (16-bit) with whatever header fields the caller asks for.
pub fn wav(rate: u32, channels: u16, frames: &[i16]) -> Vec<u8> {
    let data_len = (frames.len() * 2) as u32;
    let mut b = b"RIFF".to_vec();
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    let block = channels as u32 * 2;
    b.extend_from_slice(&rate.wrapping_mul(block).to_le_bytes());
    b.extend_from_slice(&(block as u16).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in frames {
        b.extend_from_slice(&s.to_le_bytes());
    }
    b
}

/// `seconds` of a 440 Hz tone with a slow 3 Hz tremolo (so that samples differ along the clip).
pub fn tone(rate: u32, seconds: f32) -> Vec<f32> {
    let n = (rate as f32 * seconds) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let env = 0.5 + 0.3 * (2.0 * std::f32::consts::PI * 3.0 * t).sin();
            env * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
        })
        .collect()
}
