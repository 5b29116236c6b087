import io

import av
import numpy as np
import pytest

from audio_checks import dominant_hz, seconds
from tts_services.audio import CompressedStream, PcmStream, WavStream
from tts_services.engines.base import UpstreamUnavailable
from upstreams import tone, wav_header


def feed_in_pieces(converter, data: bytes, size: int) -> bytes:
    out = b"".join(converter.feed(data[i:i + size]) for i in range(0, len(data), size))
    return out + converter.flush()


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 32000, 48000])
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_wav_stream_resamples_to_16k_whatever_the_piece_size(rate, piece):
    pcm = tone("x" * 20, rate)                       # 1 s of 440 Hz
    out = feed_in_pieces(WavStream(), wav_header(rate, 0) + pcm, piece)
    assert seconds(out) == pytest.approx(1.0, abs=0.01)
    assert dominant_hz(out) == pytest.approx(440, abs=5)


def test_wav_stream_downmixes_stereo_and_skips_extra_chunks():
    rate = 22050
    mono = np.frombuffer(tone("x" * 20, rate), "<i2")
    stereo = np.stack([mono, mono], axis=1).astype("<i2").tobytes()
    header = bytearray(wav_header(rate, len(stereo)))
    header[22:24] = (2).to_bytes(2, "little")          # channels
    list_chunk = b"LIST" + (4).to_bytes(4, "little") + b"INFO"
    data = bytes(header[:36]) + list_chunk + bytes(header[36:]) + stereo
    out = feed_in_pieces(WavStream(), data, 333)
    assert seconds(out) == pytest.approx(1.0, abs=0.01)
    assert dominant_hz(out) == pytest.approx(440, abs=5)


@pytest.mark.parametrize("data, reason", [
    (b"OggS" + b"\0" * 60, "not WAV"),
    (wav_header(16000, 0)[:20] + (3).to_bytes(2, "little") + wav_header(16000, 0)[22:], "16-bit PCM"),
])
def test_wav_stream_rejects_other_formats(data, reason):
    with pytest.raises(UpstreamUnavailable, match=reason):
        WavStream().feed(data)


def test_wav_stream_without_header_is_an_error():
    stream = WavStream()
    stream.feed(b"RIFF")
    with pytest.raises(UpstreamUnavailable, match="no complete WAV header"):
        stream.flush()


def test_pcm_stream_keeps_odd_bytes_for_the_next_piece():
    pcm = tone("x" * 20, 24000)
    out = feed_in_pieces(PcmStream(24000), pcm, 1001)
    assert seconds(out) == pytest.approx(1.0, abs=0.01)
    assert dominant_hz(out) == pytest.approx(440, abs=5)


def mp3_of_tone(rate: int = 24000) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.frombuffer(tone("x" * 20, rate), "<i2").reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    return buf.getvalue()


def test_mp3_is_decoded_as_it_streams():
    out = feed_in_pieces(CompressedStream("mp3"), mp3_of_tone(), 500)
    assert seconds(out) == pytest.approx(1.0, abs=0.1)   # the encoder pads up to one frame
    assert dominant_hz(out) == pytest.approx(440, abs=5)


def test_garbage_instead_of_mp3_is_an_error():
    stream = CompressedStream("mp3")
    stream.feed(b"<html>not audio</html>" * 50)
    with pytest.raises(UpstreamUnavailable, match="could not decode"):
        stream.flush()
