#!/usr/bin/env python3
"""Regenerates fuzz/seeds/audio/: small clips of every format the `audio` target announces.

Each seed is one MIME-selector byte (the target's index into MIMES) followed by the file. Clips
come from espeak-ng + opusenc + sox (scripts/install-test-deps.sh); MP3 frames and the
amplifying Ogg are written here byte by byte, since no encoder for them is installed. Every
seed stays far below 64 KB so libFuzzer's default max_len (the largest seed) stays small.
"""
import os
import struct
import subprocess
import tempfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "audio")
OGG_OPUS, MP4, AAC, MPEG, WAV, FLAC = range(6)


def put(name, mime, data):
    assert len(data) < 64 * 1024, (name, len(data))
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes([mime]) + data)


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ogg_crc(data):
    crc = 0
    for b in data:
        crc ^= b << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def ogg_page(serial, seq, granule, packets, flags=0):
    """One Ogg page holding whole packets (each < 255 bytes, or empty)."""
    lacing = bytes(len(p) for p in packets)
    assert all(len(p) < 255 for p in packets) and len(packets) <= 255
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, seq, 0, len(packets))
    page = bytearray(header + lacing + b"".join(packets))
    struct.pack_into("<I", page, 22, ogg_crc(page))
    return bytes(page)


def amplifying_ogg(pages):
    """Ogg/Opus whose audio is one 120 ms packet (two empty 60 ms SILK frames, i.e. lost frames)
    then pages of 255 zero-length packets, each concealed for as long as the packet before it:
    ~30 s of output per 282-byte page."""
    serial = 0x5A4E4452
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 4) + b"fuzz" + struct.pack("<I", 0)
    out = [ogg_page(serial, 0, 0, [head], flags=2), ogg_page(serial, 1, 0, [tags])]
    # TOC: config 3 (SILK NB 60 ms), code 3 (M frames); then CBR with M = 2 and no padding.
    first = bytes([(3 << 3) | 3, 2])
    granule = 0
    for i in range(pages):
        packets = [first] if i == 0 else []
        packets += [b""] * (255 - len(packets))
        granule += 255 * 5760
        flags = 4 if i == pages - 1 else 0
        out.append(ogg_page(serial, 2 + i, granule, packets, flags))
    return b"".join(out)


def silent_mp3(frames):
    """MPEG-1 Layer III, 32 kbit/s, 44.1 kHz, mono: header FF FB 10 C0, zero side info and main
    data (part2_3_length 0 everywhere: silence). 104 bytes a frame."""
    frame = b"\xff\xfb\x10\xc0" + bytes(100)
    return frame * frames


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "raw.wav")
        wav = os.path.join(d, "clip.wav")
        long = os.path.join(d, "long.wav")
        run("espeak-ng", "-s", "220", "-w", long, "Hi Sandra.")
        # Half a second of speech: longer clips add decode time per execution, not coverage.
        run("sox", long, raw, "trim", "0.1", "0.5")
        # 8 kHz 8-bit keeps the PCM seeds small; sox also rewrites espeak's streaming header.
        run("sox", raw, "-r", "8000", "-b", "8", wav)
        put("speech.wav", WAV, open(wav, "rb").read())
        flac = os.path.join(d, "clip.flac")
        run("sox", raw, "-r", "8000", flac)
        put("speech.flac", FLAC, open(flac, "rb").read())
        vorbis = os.path.join(d, "clip.ogg")
        run("sox", raw, "-r", "8000", "-C", "-1", vorbis)
        put("speech_vorbis.ogg", OGG_OPUS, open(vorbis, "rb").read())
        for name, extra in [
            ("speech_mono.opus", ["--bitrate", "12"]),
            ("speech_hybrid.opus", ["--bitrate", "24", "--framesize", "10"]),
        ]:
            opus = os.path.join(d, name)
            run("opusenc", "--quiet", *extra, raw, opus)
            put(name, OGG_OPUS, open(opus, "rb").read())
        stereo = os.path.join(d, "stereo.wav")
        run("sox", raw, "-c", "2", "-r", "24000", stereo)
        opus = os.path.join(d, "stereo.opus")
        run("opusenc", "--quiet", "--bitrate", "16", stereo, opus)
        put("speech_stereo.opus", OGG_OPUS, open(opus, "rb").read())
    put("silence.mp3", MPEG, silent_mp3(20))
    # Two pages (~61 s of audio from 0.6 KB): ten already cost seconds of CPU per execution.
    put("amplifying_zero_packets.opus", OGG_OPUS, amplifying_ogg(2))


if __name__ == "__main__":
    main()
