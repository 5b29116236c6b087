"""Intake: what an upload is, by content; real files in every accepted format and some that are not."""
import cv2
import numpy as np
import pillow_heif
import pytest
from PIL import Image

from conftest import ROOT
from lipsync_worker import avatars, faces, intake

PORTRAIT = ROOT / "assets" / "astronaut.png"


def portrait() -> Image.Image:
    return Image.open(PORTRAIT).convert("RGB")


def heic(path):
    pillow_heif.from_pillow(portrait()).save(path, quality=90)
    return path


def write_video(path, fourcc="mp4v", seconds=1.0, fps=30):
    image = cv2.imread(str(PORTRAIT))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (image.shape[1], image.shape[0]))
    for i in range(int(seconds * fps)):
        writer.write(np.roll(image, i % 8, axis=1))  # slight motion
    writer.release()
    return path


def one_face(media: intake.Media) -> bool:
    return len(faces.detect_faces(cv2.imread(str(media.path)))) == 1


@pytest.mark.parametrize("pillow_format, fmt", [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")])
def test_images_are_known_by_content_whatever_their_name(tmp_path, pillow_format, fmt):
    upload = tmp_path / "upload.bin"
    portrait().save(upload, format=pillow_format)
    media = intake.identify(upload, tmp_path / "work")
    assert (media.kind, media.format) == ("image", fmt) and one_face(media)
    prepared = avatars.prepare(upload, "astro", tmp_path)
    assert (prepared.kind, prepared.format, prepared.frame_count) == ("image", fmt, 1)


def test_heic_is_converted_to_a_png_even_under_a_jpg_name(tmp_path):
    for name in ("photo.heic", "photo.jpg"):
        media = intake.identify(heic(tmp_path / name), tmp_path / "work")
        assert (media.kind, media.format, media.path.suffix) == ("image", "heic", ".png")
        assert media.path.parent == tmp_path / "work" and one_face(media)
    prepared = avatars.prepare(tmp_path / "photo.jpg", "astro", tmp_path / "data")
    assert avatars.load(tmp_path / "data", "astro").config["source_format"] == prepared.format == "heic"


@pytest.mark.parametrize("brand, detected", [(b"heix", "image/heic"), (b"avif", "image/avif")])
def test_heif_brands_filetype_misses_are_told_apart(tmp_path, brand, detected):
    data = bytearray(heic(tmp_path / "photo.heic").read_bytes())
    assert data[4:12] == b"ftypheic"
    compatible = data.index(b"mif1heic") + 4
    data[8:12] = data[compatible:compatible + 4] = brand  # the major and the compatible brand
    (tmp_path / "photo.heic").write_bytes(data)
    assert intake.sniff(tmp_path / "photo.heic") == detected


@pytest.mark.parametrize("content, detected", [
    (b"Dear avatar,\nplease talk.\n\xd8\xb3\xd9\x84\xd8\xa7\xd9\x85\n", "text/plain"),
    (b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "application/pdf"),
    (b"PK\x03\x04" + bytes(40), "application/zip"),
    (bytes(range(256)) * 4, "unknown"),
    (b"", "empty"),
])
def test_other_files_are_refused_naming_what_they_are(tmp_path, content, detected):
    upload = tmp_path / "photo.jpg"
    upload.write_bytes(content)
    with pytest.raises(intake.UnsupportedMedia, match=f"photo.jpg is {detected}, not a photo or a video") as info:
        intake.identify(upload, tmp_path)
    assert info.value.detected == detected and "JPEG, PNG" in str(info.value)
    assert list(tmp_path.iterdir()) == [upload]


def test_a_truncated_jpeg_is_refused_though_opencv_would_decode_it(tmp_path):
    whole, cut = tmp_path / "whole.jpg", tmp_path / "cut.jpg"
    portrait().save(whole, quality=90)
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    with pytest.raises(avatars.AvatarError, match="the image is truncated or corrupt"):
        intake.identify(cut, tmp_path)


def test_an_exif_rotated_phone_photo_is_turned_upright(tmp_path):
    sideways = portrait().transpose(Image.Transpose.ROTATE_90)   # as the sensor stored it
    exif = Image.Exif()
    exif[intake.ORIENTATION] = 6                                  # "turn 90 degrees clockwise to show"
    sideways.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    raw = cv2.imread(str(tmp_path / "phone.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert faces.detect_faces(raw) == []                        # a face on its side is no face to Haar
    media = intake.identify(tmp_path / "phone.jpg", tmp_path / "work")
    assert media.path.suffix == ".png" and one_face(media)
    assert np.abs(cv2.imread(str(media.path)).astype(int) - cv2.imread(str(PORTRAIT)).astype(int)).mean() < 8


def test_a_transparent_png_is_flattened_onto_white(tmp_path):
    image = portrait().convert("RGBA")
    image.paste((0, 0, 0, 0), (0, 0, 40, 40))                     # a clear corner, black underneath
    image.save(tmp_path / "cutout.png")
    media = intake.identify(tmp_path / "cutout.png", tmp_path / "work")
    assert media.path != tmp_path / "cutout.png" and cv2.imread(str(media.path))[:40, :40].min() == 255


def test_an_animated_gif_becomes_a_still_from_its_first_frame(tmp_path):
    first = portrait()
    frames = [first, first.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("RGB", first.size)]
    first.save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    media = intake.identify(tmp_path / "anim.gif", tmp_path / "work")
    assert (media.kind, media.format) == ("image", "gif") and one_face(media)


@pytest.mark.parametrize("fourcc, name, fmt", [("mp4v", "clip.mp4", "mp4"), ("mp4v", "clip.mov", "mov"),
                                               ("VP80", "clip.webm", "webm")])
def test_videos_are_known_by_content(tmp_path, fourcc, name, fmt):
    video = write_video(tmp_path / name, fourcc)
    renamed = video.rename(tmp_path / "clip.png")                 # the name lies; the content does not
    media = intake.identify(renamed, tmp_path)
    assert media == intake.Media(renamed, "video", fmt)


def test_an_mp4_becomes_a_video_avatar_at_25_fps(tmp_path):
    video = write_video(tmp_path / "clip.mp4", seconds=2.0, fps=30)
    prepared = avatars.prepare(video, "clip", tmp_path)
    assert (prepared.kind, prepared.format, prepared.frame_count) == ("video", "mp4", 50)
    assert prepared.faces["with_face"] == 50 and prepared.quality.verdict == "good"


def test_a_truncated_video_is_refused(tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    video.write_bytes(video.read_bytes()[:2000])                 # the index (moov) is at the end
    with pytest.raises(avatars.AvatarError, match="the video cannot be decoded"):
        intake.identify(video, tmp_path)
