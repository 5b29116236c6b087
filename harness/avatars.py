"""Avatar folders for tests and benchmarks: the bundled portrait prepared by the worker's own
tool, and folders made by hand (the fake worker needs no more than a config.json)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTRAIT = ROOT / "assets" / "astronaut.png"


def prepare_portrait(data_dir: Path, name: str = "demo") -> Path:
    """avatars/NAME under `data_dir` from the bundled portrait, by `python -m lipsync_worker
    prepare` as an operator would make it; RuntimeError with the tool's output when it fails."""
    done = subprocess.run([sys.executable, "-m", "lipsync_worker", "prepare", str(PORTRAIT), "--avatar_id", name],
                          cwd=ROOT, env={**os.environ, "AVATAR_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"prepare failed:\n{done.stdout}\n{done.stderr}")
    return data_dir / "avatars" / name


def make_avatar(data_dir: Path, name: str, source: Path | None = None, **config) -> Path:
    """avatars/NAME: a copy of a prepared avatar folder (for the real worker), or only a
    config.json (enough for the fake worker), with `config` merged into config.json."""
    folder = data_dir / "avatars" / name
    if source is not None:
        shutil.copytree(source, folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.json"
    current = json.loads(config_file.read_text()) if config_file.exists() else {}
    config_file.write_text(json.dumps({**current, **config}))
    return folder
