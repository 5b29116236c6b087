"""What an uploaded file is, told by its content (never its name), as a file OpenCV can read.

Accepted: JPEG, PNG, WebP, GIF, HEIC/HEIF, MP4, MOV and WebM. A GIF, animated or not, becomes a
still avatar from its first frame: GIF timing is irregular and 256 colours make a poor talking
video. An animated WebP is treated the same way.

Nothing is decoded before its size is known to be within bounds.Bounds: an image's header gives
its size, a video's container its frame size, rate and length.

Images are decoded in full by Pillow first, because OpenCV decodes a truncated JPEG without a
word (a grey lower half and all). Images OpenCV would get wrong are written to `workdir` as an
upright RGB PNG: HEIC (OpenCV has no decoder), GIF, animated WebP, EXIF-rotated phone photos
(the tag would otherwise depend on which decoder reads the file) and transparent ones (OpenCV
drops alpha and shows whatever colour hides under it; we flatten onto white).
"""
from __future__ import annotations

import codecs
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import cv2
import filetype
import pillow_heif
from PIL import Image, ImageOps

from contracts.avatars import AvatarError
from contracts.bounds import DEFAULT, Bounds

from .bounds import TooCostly, check_picture, megapixels, video_pixels_refusal

pillow_heif.register_heif_opener()

ACCEPTED = "JPEG, PNG, WebP, GIF, HEIC, MP4, MOV or WebM"
IMAGES = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp", "image/gif": "gif",
          "image/heic": "heic"}
VIDEOS = {"video/mp4": "mp4", "video/x-m4v": "mp4", "video/quicktime": "mov", "video/webm": "webm"}
PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "heic": "HEIF"}
# ISO-BMFF brands (the ftyp box) of HEIF with HEVC inside. filetype knows only 'heic' and
# mif1/msf1 listing 'heic', so iPhone bursts ('heix') and sequences ('hevc') would go unnamed.
HEVC_BRANDS = {"heic", "heix", "heim", "heis", "hevc", "hevx"}
# mif1/msf1 are plain HEIF, which AVIF shares: AVIF lists 'avif'/'avis' too, and is refused
# (pillow-heif 1.x dropped AV1, and OpenCV builds differ on it).
HEIF_BRANDS = {"mif1", "msf1"}
AVIF_BRANDS = {"avif", "avis"}
# A converted copy needs no more: read_frames scales to max_side (720 by default), and a
# full-size PNG of a 48 MP phone photo takes seconds to write.
CONVERT_MAX_SIDE = 2048
ORIENTATION = 0x0112  # the EXIF tag
UNDECODABLE = "the video cannot be decoded: it is truncated, corrupt or in a codec this server lacks"


class UnsupportedMedia(AvatarError):
    """The file is not one of the accepted kinds; `detected` says what it is instead."""

    def __init__(self, detected: str, name: str = "the file") -> None:
        self.detected = detected
        super().__init__(f"{name} is {detected}, not a photo or a video: send {ACCEPTED}")


@dataclass(frozen=True)
class Media:
    path: Path                          # a file OpenCV reads: the upload, or a PNG in workdir
    kind: Literal["image", "video"]
    format: str                         # jpeg, png, webp, gif, heic, mp4, mov, webm


def _brands(head: bytes) -> set[str]:
    """Major and compatible brands of an ISO-BMFF file (MP4, MOV, HEIF, AVIF); empty for others."""
    if head[4:8] != b"ftyp":
        return set()
    box = head[8:int.from_bytes(head[:4], "big")]
    return {box[i:i + 4].decode("latin-1") for i in range(0, len(box) - 3, 4) if i != 4}  # 4: minor version


def _is_text(head: bytes) -> bool:
    try:  # final=False: the head may end inside a multi-byte character
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def sniff(path: Path) -> str:
    """The MIME type of a file from its first bytes; "text/plain", "empty" or "unknown" when no
    magic number matches."""
    with open(path, "rb") as f:
        head = f.read(8192)
    brands = _brands(head)
    if brands & AVIF_BRANDS and not brands & HEVC_BRANDS:
        return "image/avif"
    if brands & (HEVC_BRANDS | HEIF_BRANDS):
        return "image/heic"
    guess = filetype.guess(head)
    if guess is not None:
        return guess.mime
    if not head:
        return "empty"
    return "text/plain" if _is_text(head) else "unknown"


def identify(path: Path, workdir: Path, bounds: Bounds = DEFAULT) -> Media:
    """What `path` is, as a Media OpenCV can read; UnsupportedMedia, TooCostly (beyond `bounds`)
    or AvatarError say why not."""
    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"{path} is not a file")
    mime = sniff(path)
    if mime in VIDEOS:
        probe_video(path, bounds)  # before OpenCV decodes even one frame
        _check_video(path)
        return Media(path, "video", VIDEOS[mime])
    if mime not in IMAGES:
        raise UnsupportedMedia(mime, path.name)
    return _image(path, IMAGES[mime], Path(workdir), bounds)


def probe_video(path: Path, bounds: Bounds) -> None:
    """Refuse, from the container's metadata alone, a video whose frames are too large, too few a
    second, or too many pixels in all within its first bounds.max_seconds."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise AvatarError("the file holds no video stream")
            stream = container.streams.video[0]
            width, height, rate = stream.width, stream.height, stream.average_rate
            seconds = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                       else container.duration / av.time_base if container.duration else None)
            frames = stream.frames
    except av.FFmpegError:
        raise AvatarError(UNDECODABLE) from None
    check_picture(width, height, bounds, "a frame of the video")
    if not rate and frames and seconds:
        rate = frames / seconds
    if rate and float(rate) < bounds.min_fps and (frames or 0) != 1:
        length = f"{frames} frames in {seconds:.0f} s" if frames and seconds else "by its metadata"
        raise AvatarError(f"the video has {float(rate):.3g} frames a second ({length}); an avatar video needs at "
                          f"least {bounds.min_fps:g}: send a photo, or a video at a normal frame rate")
    cut = min(seconds or bounds.max_seconds, bounds.max_seconds)
    expected = float(rate) * cut if rate else frames
    if expected:
        pixels = width * height * min(expected, frames or expected)
        if pixels > bounds.max_video_pixels:
            raise video_pixels_refusal(pixels, width, height, bounds)


def _check_video(path: Path) -> None:
    capture = cv2.VideoCapture(str(path))
    try:
        readable = capture.isOpened() and capture.read()[0]
    finally:
        capture.release()
    if not readable:
        raise AvatarError(UNDECODABLE)


def _image(path: Path, fmt: str, workdir: Path, bounds: Bounds) -> Media:
    # Pillow's own guard too (it refuses at twice this), for what our check below cannot see.
    Image.MAX_IMAGE_PIXELS = bounds.max_pixels
    try:
        # formats=: decode as what the content says, whatever the name. load() decodes all of it,
        # so a truncated file raises here (PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False).
        with Image.open(path, formats=[PILLOW_FORMATS[fmt]]) as image:
            check_picture(*image.size, bounds)  # open() read the header only
            image.load()
            rotated = image.getexif().get(ORIENTATION, 1) not in (None, 1)
            transparent = "A" in image.getbands() or "transparency" in image.info
            if not (fmt in ("heic", "gif") or getattr(image, "is_animated", False) or rotated or transparent):
                return Media(path, "image", fmt)
            return Media(_upright_png(image, workdir), "image", fmt)
    except AvatarError:
        raise
    except Image.DecompressionBombError:  # Pillow's guard: over twice its limit, before our check
        raise TooCostly(f"the picture has more than {megapixels(2 * bounds.max_pixels)}; at most "
                        f"{megapixels(bounds.max_pixels)} (MAX_IMAGE_PIXELS): scale it down and send it again") from None
    except (OSError, SyntaxError, ValueError) as exc:  # what Pillow raises for broken data
        raise AvatarError(f"the image is truncated or corrupt ({exc})") from exc


def _upright_png(image: Image.Image, workdir: Path) -> Path:
    """The first frame, turned as EXIF says, flattened onto white, as an RGB PNG in workdir."""
    # For HEIC, libheif has applied the file's own rotation (irot/imir) and pillow-heif reports
    # EXIF orientation 1, so an iPhone photo is not turned twice.
    upright = ImageOps.exif_transpose(image)
    upright.thumbnail((CONVERT_MAX_SIDE, CONVERT_MAX_SIDE))
    if "A" in upright.getbands() or "transparency" in upright.info:
        rgba = upright.convert("RGBA")
        upright = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix="upright-", suffix=".png", delete=False) as out:
        upright.convert("RGB").save(out, format="PNG", compress_level=1)  # a scratch copy: fast over small
    return Path(out.name)
