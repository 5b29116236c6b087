"""MuseTalk's face parsing: the face box and blend mask rules on hand-drawn label maps (a random
network's parse is noise), the network through its real loader with random weights of the real
architecture, and which rules an avatar's material was made with."""
import dataclasses
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from contracts import prepare
from harness.avatars import PORTRAIT
from harness.musetalk import save_random_face_parsing
from lipsync_worker import avatars, preparation
from lipsync_worker.engines import create_engine
from lipsync_worker.musetalk_model import face_parsing, material
from lipsync_worker.musetalk_model.face_parsing import LOWER_LIP, MOUTH, NOSE, SKIN, UPPER_LIP
from lipsync_worker.musetalk_model.framing import (blend_box, crop_box, ellipse_mask, jaw, parsed_box,
                                                   parsed_mask)

HAIR, BROWS, EYES, EARS, NECK = 17, 2, 4, 7, 14
BLUR_REACH = 26   # px: half the Gaussian's width over a 512 px square


def drawn_face() -> np.ndarray:
    """A parsed frontal face in its 512 px square: nose rows 200-299, chin at row 420, the skin
    from column 120 to 391 below a wider forehead, ears and neck beside and below it."""
    labels = np.zeros((512, 512), np.uint8)
    labels[40:100, 100:412] = HAIR
    labels[100:150, 100:412] = SKIN          # the forehead, wider than the jaw
    labels[150:420, 120:392] = SKIN
    labels[160:170, 170:342] = BROWS
    labels[180:195, 170:342] = EYES
    labels[180:300, 100:120] = EARS
    labels[180:300, 392:412] = EARS
    labels[200:300, 236:276] = NOSE
    labels[330:345, 206:306] = UPPER_LIP
    labels[345:350, 206:306] = MOUTH
    labels[350:365, 206:306] = LOWER_LIP
    labels[420:, 180:332] = NECK
    return labels


@pytest.fixture(scope="session")
def parsing_models(tiny_models, tmp_path_factory):
    """MODELS_DIR with the tiny MuseTalk models and a random BiSeNet face parser."""
    root = tmp_path_factory.mktemp("parsing_models")
    shutil.copytree(tiny_models, root, dirs_exist_ok=True)
    save_random_face_parsing(root)
    return root


@pytest.fixture
def data_dir(tmp_path, demo_source):
    shutil.copytree(demo_source, tmp_path / "avatars" / "demo")
    return tmp_path


def test_the_box_is_musetalks_landmark_box_from_the_parsed_face():
    labels = drawn_face()
    # Sides: the skin below the nose's top (not the forehead, not the ears); bottom: the chin;
    # top: as far above the nose's middle (row 250) as the chin is below it.
    assert parsed_box(labels, (0, 0, 512, 512), 512, 512) == (120, 80, 392, 420)
    assert parsed_box(labels, (100, 40, 356, 296), 512, 512) == (160, 80, 296, 250)   # a square at half scale
    assert parsed_box(labels, (100, -100, 356, 156), 512, 512) == (160, 0, 296, 110)   # stops at the frame's top
    assert parsed_box(labels, (100, 40, 356, 296), 250, 512) is None                   # past the frame's side
    assert parsed_box(np.where(labels == NOSE, SKIN, labels), (0, 0, 512, 512), 512, 512) is None   # no nose
    no_chin = labels.copy()
    no_chin[200:] = np.where(labels[200:] == SKIN, 0, labels[200:])
    assert parsed_box(no_chin, (0, 0, 512, 512), 512, 512) is None


def test_the_jaw_mask_is_the_lower_face_without_the_nose_feathered():
    labels = drawn_face()
    region = jaw(labels)
    assert region[357, 256] == 255 and region[320, 200] == 255            # lips, the skin beside the mouth
    assert region[250, 256] == 0                                          # the nose
    assert labels[320, 130] == SKIN and region[320, 130] == 0             # the cheek's edge is trimmed
    assert region[190, 200] == 255 and labels[190, 200] == EYES           # grown over the eyes' lower lids...
    crop, square = (85, 85, 427, 427), (0, 0, 512, 512)
    assert blend_box(crop) == square
    mask = parsed_mask(labels, crop, square)
    assert mask.shape == (512, 512) and mask.dtype == np.uint8
    assert mask[:256 - BLUR_REACH].max() == 0                             # ...but the upper face is never the model's
    assert mask[357, 256] == 255 and mask[390, 256] == 255 and mask[320, 200] == 255   # lips, chin, cheek
    assert mask[280, 256] < mask[357, 256] // 2                           # the nose stays the avatar's
    assert mask[427 + BLUR_REACH:].max() == 0                             # below the box: the neck
    # Feathered: the edges (the square's middle, the box's bottom, the trimmed cheek) pass through
    # values between 0 and 255.
    for y, x in ((256 - 5, 200), (256 + 5, 200), (427, 200), (320, 144)):
        assert 0 < mask[y, x] < 255, (y, x, mask[y, x])


def test_without_a_parsed_face_the_mask_is_the_lower_half_of_an_ellipse_in_the_box():
    crop, square = (85, 85, 427, 427), (0, 0, 512, 512)
    mask = ellipse_mask(crop, square)
    assert mask[:256 - BLUR_REACH].max() == 0 and mask[427 + BLUR_REACH:].max() == 0
    assert mask[340, 256] == 255 and mask[340, 50] == 0                   # inside the ellipse, outside it
    assert 0 < mask[256, 256] < 255 and 0 < mask[427, 256] < 255


def test_the_network_loads_the_real_checkpoints_layout_and_refuses_another(parsing_models, tmp_path):
    state = torch.load(face_parsing.weights_path(parsing_models), weights_only=True)
    # Names and shapes of face-parse-bisent/79999_iter.pth (MuseTalk's BiSeNet), the heads that
    # only training used included.
    assert len(state) == 191
    for name, shape in (("cp.resnet.conv1.weight", (64, 3, 7, 7)),
                        ("cp.resnet.layer4.1.conv2.weight", (512, 512, 3, 3)),
                        ("cp.arm32.conv_atten.weight", (128, 128, 1, 1)), ("ffm.conv1.weight", (64, 256, 1, 1)),
                        ("conv_out.conv_out.weight", (19, 256, 1, 1)), ("conv_out32.conv_out.weight", (19, 64, 1, 1))):
        assert state[name].shape == shape
    net = face_parsing.load(parsing_models, torch.device("cpu"))
    labels = face_parsing.parse(net, cv2.imread(str(PORTRAIT)), (150, -20, 310, 140))   # past the frame's top
    assert labels.shape == (512, 512) and labels.dtype == np.uint8 and labels.max() < 19
    broken = tmp_path / "broken"
    del state["cp.resnet.layer4.1.bn2.running_var"]
    face_parsing.weights_path(broken).parent.mkdir(parents=True)
    torch.save(state, face_parsing.weights_path(broken))
    with pytest.raises(RuntimeError, match="layer4.1.bn2.running_var"):
        face_parsing.load(broken, torch.device("cpu"))


def test_a_worker_makes_its_material_with_face_parsing_once_and_anew_without_it(parsing_models, tiny_models,
                                                                                 data_dir):
    engine = create_engine("musetalk", 2, parsing_models)
    engine.load(avatars.load(data_dir, "demo"))
    kept = data_dir / "avatars" / "demo" / "musetalk"
    meta = json.loads((kept / "material.json").read_text())
    assert engine.material.made_with["mask"] == "face-parsing" and meta["made_with"] == engine.material.made_with
    x1, y1, x2, y2 = engine.material.blends[0]
    assert engine.material.masks[0].shape == (y2 - y1, x2 - x1, 1)
    made = (kept / "masks.npz").stat().st_mtime_ns
    again = create_engine("musetalk", 2, parsing_models)
    again.load(avatars.load(data_dir, "demo"))
    assert (kept / "masks.npz").stat().st_mtime_ns == made
    assert np.array_equal(again.material.masks[0], engine.material.masks[0])
    without = create_engine("musetalk", 2, tiny_models)
    without.load(avatars.load(data_dir, "demo"))
    assert without.material.made_with == {"box": "haar", "mask": "ellipse"}
    assert json.loads((kept / "material.json").read_text())["made_with"] == {"box": "haar", "mask": "ellipse"}


def test_boxes_come_from_the_parsed_face_only_when_every_frame_shows_one(monkeypatch, parsing_models, data_dir):
    loaded = avatars.load(data_dir, "demo")
    frame, regions = loaded.frames[0], loaded.regions[0]
    avatar = dataclasses.replace(loaded, frames=[frame, frame.copy()], regions=[regions, regions])
    height, width = frame.shape[:2]
    monkeypatch.setattr(face_parsing, "parse", lambda net, frame, square: drawn_face())
    made = material.prepare_with_vae(avatar, parsing_models)
    square = blend_box(regions.face)
    assert made.made_with == {"box": "face-parsing", "mask": "face-parsing"}
    assert made.crops == [crop_box(parsed_box(drawn_face(), square, width, height), height)] * 2
    # The second frame's parse shows no face: Haar's boxes for both, so the crop never jumps.
    shutil.rmtree(data_dir / "avatars" / "demo" / "musetalk")
    monkeypatch.setattr(face_parsing, "parse", lambda net, seen, square: drawn_face() if seen is frame
                        else np.zeros((512, 512), np.uint8))
    made = material.prepare_with_vae(avatar, parsing_models)
    assert made.made_with == {"box": "haar", "mask": "face-parsing"}
    assert made.crops == [crop_box(regions.face, height)] * 2


def test_registration_records_how_the_material_was_made(monkeypatch, parsing_models, tmp_path):
    monkeypatch.setenv("MODELS_DIR", str(parsing_models))
    result = preparation.prepare_avatar(prepare.Request(source=str(PORTRAIT), name="muse", data_dir=str(tmp_path),
                                                        latents=True))
    meta = json.loads((tmp_path / "avatars" / "muse" / "musetalk" / "material.json").read_text())
    assert result["musetalk_material"] == meta["made_with"]
    assert result["musetalk_material"]["mask"] == "face-parsing"
    puppet = preparation.prepare_avatar(prepare.Request(source=str(PORTRAIT), name="puppet", data_dir=str(tmp_path)))
    assert puppet["musetalk_material"] is None
