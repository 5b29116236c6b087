"""Checking and fetching MuseTalk's weights (their layout and what is missing:
contracts.musetalk_weights)."""
from __future__ import annotations

from pathlib import Path

from contracts.musetalk_weights import DOWNLOAD_COMMAND, FETCHED, UNET, missing


class MissingWeights(Exception):
    """The weights are not (all) there; the message names the files and the command that fetches them."""


def check(root: Path) -> None:
    absent = missing(root)
    if absent:
        raise MissingWeights(f"MuseTalk weights missing in MODELS_DIR={root.resolve()}: {', '.join(absent)}; "
                             f"fetch them with '{DOWNLOAD_COMMAND}' (needs the internet), or set MODELS_DIR "
                             "to a folder that has them")


def download(root: Path) -> list[Path]:
    """Fetch what is missing, the optional face parsing too, from the Hugging Face hub (HF_ENDPOINT
    and HF_TOKEN are honoured); files already present are kept. Raises whatever the hub client
    raises when it cannot."""
    from huggingface_hub import hf_hub_download

    fetched = []
    for folder, (repo, needs) in FETCHED.items():
        for choices in needs:
            if any((root / folder / name).is_file() for name in choices):
                continue
            if folder == UNET:  # the repository keeps the folder: fetch into MODELS_DIR itself
                path = hf_hub_download(repo, f"{folder}/{choices[0]}", local_dir=root)
            else:
                path = hf_hub_download(repo, choices[0], local_dir=root / folder)
            fetched.append(Path(path))
    return fetched
