import numpy as np
import pytest
import soundfile as sf

from asrkd.audio import SAMPLE_RATE, AudioError, audio_duration, load_audio, resample, write_wav


def sine(freq: float, sample_rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(wav: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sample_rate)[spectrum.argmax()])


def test_write_then_load_round_trip(tmp_path):
    wav = sine(440, SAMPLE_RATE, 1.0)
    path = tmp_path / "nested" / "dir" / "tone.wav"  # parent folders are created

    write_wav(path, wav)

    assert sf.info(path).subtype == "PCM_16"
    assert [p.name for p in path.parent.iterdir()] == ["tone.wav"]  # no temporary file left
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.shape == wav.shape
    np.testing.assert_allclose(loaded, wav, atol=1 / 32768)
    assert audio_duration(path) == pytest.approx(1.0)


def test_write_wav_clips_to_full_scale(tmp_path):
    path = tmp_path / "loud.wav"
    write_wav(path, np.array([-3.0, -1.0, 0.0, 1.0, 3.0], dtype=np.float32))
    np.testing.assert_allclose(load_audio(path), [-1, -1, 0, 1, 1], atol=1 / 32768)


def test_write_wav_replaces_an_existing_file(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, np.zeros(100, dtype=np.float32))
    write_wav(path, np.full(50, 0.5, dtype=np.float32))
    assert load_audio(path).shape == (50,)


@pytest.mark.parametrize("file_rate", [8000, 22050, 44100, 48000])
def test_load_resamples_to_16k_and_keeps_the_pitch(tmp_path, file_rate):
    freq = 997.0  # not a divisor of any rate, so the check is not helped by aliasing luck
    path = tmp_path / f"tone_{file_rate}.wav"
    source = sine(freq, file_rate, 1.5)
    sf.write(path, source, file_rate, subtype="FLOAT")

    wav = load_audio(path)

    assert wav.dtype == np.float32
    assert len(wav) == round(len(source) * SAMPLE_RATE / file_rate)
    assert peak_frequency(wav, SAMPLE_RATE) == pytest.approx(freq, abs=1.0)
    middle = wav[1000:-1000]  # away from the resampler's edge transients
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_resample_array_to_a_lower_rate_and_back():
    wav = sine(300, SAMPLE_RATE, 1.0)
    down = resample(wav, SAMPLE_RATE, 8000)
    assert down.shape == (8000,)
    up = resample(down, 8000, SAMPLE_RATE)
    assert np.abs(up[500:-500] - wav[500:-500]).max() < 1e-3
    assert resample(wav, SAMPLE_RATE, SAMPLE_RATE) is wav


def test_stereo_is_mixed_down_to_the_mean(tmp_path):
    left, right = sine(200, SAMPLE_RATE, 0.5), sine(3000, SAMPLE_RATE, 0.5, amplitude=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")

    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize(
    "dtype, subtype, full_scale",
    [(np.int16, "PCM_16", 2**15), (np.int32, "PCM_32", 2**31)],
)
def test_integer_pcm_is_scaled_to_unit_range(tmp_path, dtype, subtype, full_scale):
    samples = np.array([-full_scale, -full_scale // 2, 0, full_scale // 4], dtype=dtype)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype=subtype)

    np.testing.assert_array_equal(load_audio(path), [-1.0, -0.5, 0.0, 0.25])


def test_offset_and_duration_select_a_segment(tmp_path):
    ramp = np.arange(-16000, 16000, dtype=np.int16)  # sample i holds a unique value
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, SAMPLE_RATE, subtype="PCM_16")
    as_float = ramp.astype(np.float32) / 32768

    np.testing.assert_array_equal(load_audio(path, offset=0.25, duration=0.5), as_float[4000:12000])
    np.testing.assert_array_equal(load_audio(path, offset=1.5), as_float[24000:])
    np.testing.assert_array_equal(load_audio(path, offset=1.5, duration=10.0), as_float[24000:])


def test_offset_and_duration_are_in_seconds_of_the_file_before_resampling(tmp_path):
    path = tmp_path / "tone8k.wav"
    sf.write(path, sine(440, 8000, 3.0), 8000, subtype="FLOAT")
    assert len(load_audio(path, offset=1.0, duration=1.5)) == 24000


def _missing(tmp_path):
    return tmp_path / "missing.wav"


def _corrupt(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00garbage, not audio" * 20)
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


def _nan(tmp_path):
    wav = sine(440, SAMPLE_RATE, 0.5)
    wav[1234] = np.nan
    wav[2000] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, wav, SAMPLE_RATE, subtype="FLOAT")
    return path


@pytest.mark.parametrize(
    "make, kwargs, fault",
    [
        (_missing, {}, "no such audio file"),
        (_corrupt, {}, "unreadable or corrupt"),
        (_empty, {}, "empty audio file"),
        (_nan, {}, r"2 non-finite \(NaN/inf\) samples, the first at 0.077 s"),
        (_nan, {"offset": 0.5}, "beyond the end"),
    ],
    ids=["missing", "corrupt", "empty", "nan", "offset-beyond-end"],
)
def test_bad_audio_raises_audio_error_naming_file_and_fault(tmp_path, make, kwargs, fault):
    path = make(tmp_path)
    with pytest.raises(AudioError, match=fault) as info:
        load_audio(path, **kwargs)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_audio_duration_reads_the_header(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, sine(440, 44100, 1.5), 44100)
    assert audio_duration(path) == pytest.approx(1.5)
    with pytest.raises(AudioError, match="unreadable or corrupt"):
        audio_duration(_corrupt(tmp_path))


def test_write_wav_refuses_non_finite_samples(tmp_path):
    path = tmp_path / "bad.wav"
    with pytest.raises(AudioError, match="non-finite"):
        write_wav(path, np.array([0.0, np.nan], dtype=np.float32))
    assert not path.exists()
