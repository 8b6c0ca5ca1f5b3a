"""`python -m shard.convert GGUF OUT_DIR`: dequantise a GGUF checkpoint into a float32 safetensors directory.

The launcher runs this as a child process and waits for it (as TGI's launcher runs
`text-generation-server download-weights`), so that torch, transformers and gguf are loaded here and
never in the launcher. It writes the weights, config.json, generation_config.json and the tokenizer
into OUT_DIR, an existing empty directory. The cache layout around it (the lock, the staging
directory, the marker written last, the rename into place) is the launcher's: launcher/embedded.py.
Progress goes to stderr; the exit status is 0 only when every file was written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STEPS = ("load GGUF", "weights", "config", "tokenizer")


def convert(gguf_path: Path, out_dir: Path) -> None:
    from tqdm import tqdm

    with tqdm(total=len(STEPS), desc="tgi-py conversion", unit="step", file=sys.stderr) as bar:
        bar.set_postfix_str(STEPS[0])
        model, tokenizer = load_gguf(gguf_path)
        bar.update()
        bar.set_postfix_str(STEPS[1])
        _write_weights(model, out_dir)
        bar.update()
        bar.set_postfix_str(STEPS[2])
        _write_configs(model.config.to_dict(), out_dir)
        bar.update()
        bar.set_postfix_str(STEPS[3])
        tokenizer.save_pretrained(out_dir)
        _inline_chat_template(out_dir)
        bar.update()


def load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """The model and tokenizer as transformers reads them from the GGUF file (dequantised to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def _write_weights(model: Any, out_dir: Path) -> None:
    from safetensors.torch import save_file

    state = model.state_dict()
    # The output projection is tied to the embedding; safetensors refuses shared storage, and
    # loaders re-tie it from config.tie_word_embeddings.
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    tensors = {name: tensor.detach().contiguous() for name, tensor in state.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def _write_configs(config: dict[str, Any], out_dir: Path) -> None:
    # transformers refuses save_pretrained on GGUF-loaded models, so the config is written by hand and
    # stripped of what only described the GGUF origin.
    config = {
        key: value
        for key, value in config.items()
        if key not in ("quantization_config", "torch_dtype", "dtype") and not key.startswith("_")
    }
    config["architectures"] = ["LlamaForCausalLM"]
    config["torch_dtype"] = "float32"
    config["dtype"] = "float32"
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        # Older readers (and hand-written loaders) look for the top-level key.
        config.setdefault("rope_theta", rope["rope_theta"])
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    generation = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _inline_chat_template(out_dir: Path) -> None:
    # Hub checkouts of SmolLM2 keep the template inside tokenizer_config.json; readers that only look
    # there (rather than at chat_template.jinja) should find it too.
    template_path = out_dir / "chat_template.jinja"
    config_path = out_dir / "tokenizer_config.json"
    if not template_path.is_file() or not config_path.is_file():
        return
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config.setdefault("chat_template", template_path.read_text())
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shard.convert", description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, help="the GGUF file")
    parser.add_argument("out_dir", type=Path, help="an existing, empty directory to write into")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        parser.error(f"{args.gguf} is not a file")
    if not args.out_dir.is_dir():
        parser.error(f"{args.out_dir} is not a directory")
    convert(args.gguf, args.out_dir)


if __name__ == "__main__":
    main()
