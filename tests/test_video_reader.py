"""Frame-exact reading of every supported source, and a clear one-line error for every bad input."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from longvid.cli import main
from longvid.data.synthetic import index_frames, moving_shapes, read_index, write_video
from longvid.errors import InputError
from longvid.video import open_video


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """600 frames of H.264 with B-frames (3) and a keyframe every 50 frames, each carrying its index."""
    return write_video(
        tmp_path_factory.mktemp("coded") / "coded.mp4", index_frames(600), fps=30, gop=50, bframes=3, crf=28
    )


def test_frame_exact_random_access(coded):
    v = open_video(coded)
    assert v.num_frames == 600 and v.fps == 30.0 and v.info.codec == "h264"
    rng = np.random.default_rng(0)
    for indices in (
        sorted(rng.choice(600, 150, replace=False).tolist()),  # playback order
        rng.choice(600, 40).tolist(),  # any order, with repeats
        [0, 49, 50, 51, 599, 599, 599],  # GOP edges, the last (delayed B-frame) frame, padding
        list(range(100, 140)),
    ):  # dense
        got = [read_index(f) for f in v.frames(indices)]
        assert got == indices


@pytest.mark.parametrize(
    "ext,codec", [("mkv", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4"), ("mov", "libx264")]
)
def test_containers(tmp_path, ext, codec):
    path = write_video(tmp_path / f"v.{ext}", index_frames(60), fps=25, codec=codec, gop=10)
    v = open_video(path)
    assert v.num_frames == 60 and v.fps == 25.0 and v.info.container == {"mkv": "matroska"}.get(ext, ext)
    assert [read_index(f) for f in v.frames([0, 13, 59, 30])] == [0, 13, 59, 30]


def test_animated_gif(tmp_path):
    frames = [Image.fromarray(f) for f in index_frames(12)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    v = open_video(tmp_path / "a.gif")
    assert v.num_frames == 12 and v.fps == 10.0
    assert [read_index(f) for f in v.frames([0, 5, 11])] == [0, 5, 11]


def test_image_folder_single_image_and_npy(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(index_frames(15)):
        Image.fromarray(f).save(folder / f"frame_{i}.png")  # numeric order, not lexicographic
    v = open_video(folder, fps=5)
    assert v.num_frames == 15 and v.duration == 3.0
    assert [read_index(f) for f in v.frames([2, 10, 14])] == [2, 10, 14]
    img = open_video(folder / "frame_7.png")
    assert img.is_image and read_index(img.read([0])[0]) == 7
    arr = np.stack(list(index_frames(9)))
    np.save(tmp_path / "v.npy", arr)
    v = open_video(tmp_path / "v.npy", fps=3)
    assert v.num_frames == 9 and v.duration == 3.0 and np.array_equal(v.read([4])[0], arr[4])


def test_start_end_trim(tiny_model, coded):
    v = open_video(coded)
    plan = tiny_model.sampling_plan(v, num_frames=8, start=10.0, end=15.0)
    assert all(300 <= i < 450 for i in plan.indices)
    assert plan.duration == pytest.approx(5.0)
    assert [read_index(f) for f in v.frames(plan.indices)] == plan.indices


# ---------------------------------------------------------------------------------- bad inputs


def info_cli(path, capfd):
    code = main(["info", str(path)])
    out, err = capfd.readouterr()
    return code, out, err


def assert_error(path, capfd, needle):
    code, out, err = info_cli(path, capfd)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err


def test_missing_file(tmp_path, capfd):
    assert_error(tmp_path / "nope.mp4", capfd, "no such file")


def test_text_file_renamed_mp4(tmp_path, capfd):
    (tmp_path / "fake.mp4").write_text("not a video at all\n" * 50)
    assert_error(tmp_path / "fake.mp4", capfd, "not a readable video")


def test_zero_byte_file(tmp_path, capfd):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert_error(tmp_path / "empty.mp4", capfd, "file is empty")


def test_audio_only(tmp_path, capfd):
    with av.open(str(tmp_path / "audio.m4a"), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    assert_error(tmp_path / "audio.m4a", capfd, "has no video stream")


def test_truncated_mp4_without_index_is_an_error(tmp_path, capfd):
    data = write_video(tmp_path / "full.mp4", moving_shapes(120, 48, 64), fps=30, gop=30).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the moov index is at the end: lost
    assert_error(tmp_path / "cut.mp4", capfd, "not a readable video")


@pytest.mark.parametrize("kind", ["faststart-mp4", "mkv"])
def test_truncated_file_decodes_what_is_there(tmp_path, capfd, kind):
    if kind == "mkv":
        path = write_video(tmp_path / "full.mkv", index_frames(300), fps=30, gop=30)
    else:
        path = tmp_path / "full.mp4"
        with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
            s = out.add_stream("libx264", rate=Fraction(30))
            s.width, s.height, s.pix_fmt, s.options = 96, 64, "yuv420p", {"g": "30", "bf": "2"}
            for f in index_frames(300):
                out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            out.mux(s.encode())
    data = path.read_bytes()
    cut = tmp_path / f"cut{path.suffix}"
    cut.write_bytes(data[: len(data) // 2])
    v = open_video(cut)
    assert 0 < v.num_frames < 300
    assert len(v.warnings) == 1 and f"{v.num_frames} of 300 frames are usable" in v.warnings[0]
    assert [read_index(f) for f in v.frames([0, v.num_frames - 1])] == [0, v.num_frames - 1]
    code, out, err = info_cli(cut, capfd)
    assert code == 0 and err.startswith("warning:") and "frames are usable" in err


def test_one_frame_video(tmp_path, tiny_model):
    path = write_video(tmp_path / "one.mp4", index_frames(1), fps=30)
    v = open_video(path)
    assert v.num_frames == 1 and read_index(v.read([0])[0]) == 0
    answer = tiny_model.ask(v, "q", max_new_tokens=2)
    assert answer.num_frames == 8  # the official sampler pads short videos with the last frame to 8


def test_huge_declared_frame_count(tmp_path, capfd):
    path = write_video(tmp_path / "v.avi", index_frames(40), fps=25, codec="mpeg4", gop=10)
    data = bytearray(path.read_bytes())
    for tag, offset in ((b"avih", 16), (b"strh", 32)):  # dwTotalFrames, dwLength
        at = data.find(tag) + 8 + offset
        data[at : at + 4] = (2**31 - 1).to_bytes(4, "little")
    (tmp_path / "huge.avi").write_bytes(bytes(data))
    with av.open(str(tmp_path / "huge.avi")) as c:
        assert c.streams.video[0].frames == 2**31 - 1  # what a reader trusting the header would use
    assert_error(tmp_path / "huge.avi", capfd, "declares 2147483647 frames but the file holds 40")


def test_frame_outside_video(coded):
    with pytest.raises(InputError, match="outside the video"):
        list(open_video(coded).frames([600]))


# ---------------------------------------------------------------------------------- parallel decoding


def full_decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("threads", [1, 3])
def test_decoding_matches_a_full_decode(coded, threads):
    """Every path (one decoder with FFmpeg's frame threads, several decoders on GOP runs) returns the
    very pixels of a plain sequential decode, in the order asked."""
    reference = full_decode(coded)
    rng = np.random.default_rng(1)
    v = open_video(coded, threads=threads)
    gops = [[i for i in range(600) if v.key_before(v._pts[i]) == k] for k in v._key_pts]
    longest = max(gops, key=len)
    assert len(longest) >= 20 and len(v.runs(longest)) == 1
    plans = [
        list(range(600)),  # dense: every frame of every GOP
        sorted(rng.choice(600, 97, replace=False).tolist()),  # a few frames per GOP
        [gop[len(gop) // 2] for gop in gops],  # one frame per GOP (one run each)
        longest,  # inside one GOP: one decoder with FFmpeg's frame threads
        rng.choice(600, 30).tolist(),
    ]  # any order, repeats
    for plan in plans:
        got = list(v.frames(plan))
        wrong = sum(not np.array_equal(g, reference[i]) for g, i in zip(got, plan))
        assert len(got) == len(plan) and wrong == 0
    assert len(v._pool) == (0 if threads == 1 else 3)  # the parallel path ran (3 decoders, one per thread)
    v.close()


def test_parallel_runs_and_clean_stop(coded):
    v = open_video(coded, threads=4)
    plan = list(range(0, 600, 7))
    runs = v.runs(plan)
    gop = [v.key_before(v._pts[i]) for i in range(600)]  # the keyframe each frame is decoded from
    assert [i for run in runs for i in run] == plan and len(runs) == len({gop[i] for i in plan}) > 10
    assert all(len({gop[i] for i in run}) == 1 for run in runs)  # one seek per run, one run per GOP
    frames = v.frames(plan)
    assert [read_index(next(frames)) for _ in range(5)] == [0, 7, 14, 21, 28]
    frames.close()  # a consumer that stops early leaves no decoding thread behind
    assert not [t for t in threading.enumerate() if t.name == "longvid-decode"]
    assert [read_index(f) for f in v.frames([599, 0])] == [599, 0]  # the pool is reusable afterwards
    v.close()


def test_truncated_mpeg_ts_decodes_what_is_there(tmp_path, capfd):
    path = write_video(tmp_path / "full.ts", moving_shapes(120, 48, 64), fps=30, gop=30)
    data = path.read_bytes()
    cut = tmp_path / "cut.ts"
    # cut inside a transport packet, as an interrupted download is (a cut on a packet boundary looks like a whole
    # file: the size of the encoder's output decides which one half of it is); the demuxer seeks by bytes here
    # and lands past keyframes
    size = next(n for n in range(len(data) // 2, len(data)) if all(n % k for k in (188, 192, 204)))
    cut.write_bytes(data[:size])
    reference = full_decode(cut)
    v = open_video(cut)
    assert 30 < v.num_frames == len(reference) < 120
    assert len(v.warnings) == 1 and f"{v.num_frames} of" in v.warnings[0] and "frames are usable" in v.warnings[0]
    got = list(v.frames(range(v.num_frames)))
    assert sum(not np.array_equal(g, r) for g, r in zip(got, reference)) == 0 and len(got) == len(reference)
    code, out, err = info_cli(cut, capfd)
    assert code == 0 and err.startswith("warning:") and "frames are usable" in err


def test_parallel_decoding_runs_ahead_by_a_bounded_number_of_frames(coded, monkeypatch):
    from longvid.video import reader

    monkeypatch.setattr(reader, "RUN_QUEUE", 2)
    monkeypatch.setattr(reader, "AHEAD_BYTES", 64 * 96 * 3 * 6)  # 6 frames of this video
    produced = 0
    original = reader._Decoder.frames

    def counting(self, indices):
        nonlocal produced
        for item in original(self, indices):
            produced += 1
            yield item

    monkeypatch.setattr(reader._Decoder, "frames", counting)
    v = open_video(coded, threads=3)
    plan = list(range(0, 600, 2))
    frames = v.frames(plan)
    assert read_index(next(frames)) == 0
    time.sleep(1.0)  # let the decoders run as far ahead as they may
    assert 3 <= produced <= 1 + 6 < len(plan)  # the one yielded + the budget
    assert [read_index(f) for f in frames] == plan[1:]
    v.close()
