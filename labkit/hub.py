"""Opt-in: use a real Hugging Face model instead of the course's own for the later labs.

By default every lab uses the base model from labkit.zoo, which is built offline. Set
``SPECIALIST_LABS_HF_MODEL`` to a model id (e.g. ``HuggingFaceTB/SmolLM2-135M``) or a local
directory, and labs 05 and later (LoRA, quantization, efficient training) use that model instead.
Earlier labs stay on the zoo model: they pretrain and inspect it, which a real model would not fit.

A model already in the Hugging Face cache loads without touching the network. Otherwise we check
in a few seconds whether the hub is reachable and, if it is not, fail with a clear message rather
than hang on a download that can never finish.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.error
import urllib.request

import torch
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from labkit import zoo

ENV_VAR = "SPECIALIST_LABS_HF_MODEL"
FIRST_LAB = 5  # labs before this one always use the zoo model


class HubModelUnavailable(RuntimeError):
    """The opt-in model is neither cached nor downloadable right now."""


def hub_model_id() -> str | None:
    """The model id (or local directory) named by SPECIALIST_LABS_HF_MODEL, or None."""
    return os.environ.get(ENV_VAR, "").strip() or None


def _lab_number(lab_id: str | int) -> int:
    match = re.match(r"\d+", str(lab_id).strip())
    if match is None:
        raise ValueError(f"lab id should start with the lab's number (like '05'), got {lab_id!r}")
    return int(match.group())


def _offline_by_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_is_reachable(timeout_s: float = 3.0) -> bool:
    """True if the hub answers a HEAD request within timeout_s.

    The request runs in a daemon thread that we stop waiting for after timeout_s, because a
    socket timeout does not cover DNS lookups, which can stall for much longer when offline.
    """
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
            answered.append(True)
        except urllib.error.HTTPError:  # an HTTP error status still means the hub is reachable
            answered.append(True)
        except Exception:
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="labkit-hub-probe")
    thread.start()
    thread.join(timeout_s)
    return bool(answered) and answered[0]


def _local_dir(model_id: str) -> str:
    """The model's directory: itself if it is one, else its snapshot in the Hugging Face cache.

    Loading from a directory never touches the network; from_pretrained(model_id, local_files_only=True)
    still asks the hub about optional files (adapter_config.json) and retries for ~25 s when offline.
    """
    if os.path.isdir(model_id):
        return model_id
    return snapshot_download(model_id, local_files_only=True)  # LocalEntryNotFoundError (an OSError) if absent


def _load_hf(source: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if tokenizer.pad_token is None:  # many base models ship without one; fine-tuning needs it
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_model_for_lab(
    lab_id: str | int, device: torch.device | str | None = None, timeout_s: float = 3.0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a lab: the opt-in Hugging Face model for labs 05+, else the zoo model."""
    model_id = hub_model_id()
    if model_id is None:
        return zoo.load_base_model(device=device)
    if _lab_number(lab_id) < FIRST_LAB:
        print(f"{ENV_VAR}={model_id} applies to labs {FIRST_LAB:02d} and later; lab {lab_id} uses the course's model.")
        return zoo.load_base_model(device=device)
    try:
        model, tokenizer = _load_hf(_local_dir(model_id))
    except OSError as err:  # not (fully) in the Hugging Face cache
        if _offline_by_env() or not hub_is_reachable(timeout_s):
            raise HubModelUnavailable(
                f"{model_id} is not cached and this machine is offline; unset {ENV_VAR} to use the course's "
                f"own model (or download it once while online)."
            ) from err
        print(f"Downloading {model_id} from the Hugging Face hub (once; then it is cached)...", flush=True)
        model, tokenizer = _load_hf(model_id)
    from labkit.device import device as auto_device

    model.to(device if device is not None else auto_device(verbose=False))
    return model.eval(), tokenizer
