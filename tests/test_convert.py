"""`ram-edge convert`: inference of the architecture, strict key accounting, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_shared, run_cli

torch = pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")


def _golden(name="ram_tiny"):
    return require_shared("golden", name)


def _run(args):
    result = run_cli("convert", *args)
    return result


def _convert_args(src, out, tags=None, thresholds="default"):
    args = [src / "model.pth" if src.is_dir() else src, "-o", out, "--tags", tags or _golden() / "ram_tag_list.txt"]
    if thresholds == "default":
        args += ["--thresholds", _golden() / "ram_tag_list_threshold.txt"]
    elif thresholds is not None:
        args += ["--thresholds", thresholds]
    return args


def _assert_failed_cleanly(result, out, *needles):
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temporary output left behind"


@pytest.mark.parametrize("name", ["ram_tiny", "ram_plus_tiny"])
def test_convert_infers_architecture(tmp_path, name):
    src = _golden(name)
    out = tmp_path / "ckpt"
    result = _run([src / "model.pth", "-o", out, "--tags", src / "ram_tag_list.txt",
                   "--tags-chinese", src / "ram_tag_list_chinese.txt", "--thresholds", src / "ram_tag_list_threshold.txt", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    official = json.loads((src / "config.json").read_text())
    assert summary["family"] == official["model"]
    assert summary["image_size"] == official["image_size"] == 224
    assert summary["swin"] == {"embed_dim": official["swin"]["embed_dim"], "depths": official["swin"]["depths"],
                               "num_heads": official["swin"]["num_heads"], "window": official["swin"]["window_size"]}
    assert summary["num_classes"] == official["num_class"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "tags.txt", "tags_zh.txt", "thresholds.txt"]
        + (["captioning.safetensors"] if name == "ram_tiny" else []))
    if name == "ram_tiny":
        # 317 tag_encoder + 324 text_decoder entries at full size; the tiny one has fewer layers.
        from safetensors import safe_open

        with safe_open(out / "captioning.safetensors", "pt") as fh:
            keys = list(fh.keys())
        state = torch.load(src / "model.pth", weights_only=True)["model"]
        assert set(keys) == {k for k in state if k.startswith(("tag_encoder.", "text_decoder."))}


def test_convert_without_swin_buffers_uses_image_size_flag(tmp_path):
    state = torch.load(_golden() / "model.pth", weights_only=True)["model"]
    stripped = {k: v for k, v in state.items() if "attn_mask" not in k and "relative_position_index" not in k}
    torch.save({"model": stripped}, tmp_path / "stripped.pth")
    out = tmp_path / "ckpt"
    result = _run(_convert_args(tmp_path / "stripped.pth", out) + ["--image-size", "224", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["image_size"] == 224


def test_legacy_vision_multi_name_is_renamed(tmp_path):
    state = torch.load(_golden() / "model.pth", weights_only=True)["model"]
    legacy = {k.replace("tagging_head", "vision_multi"): v for k, v in state.items()}
    torch.save({"model": legacy}, tmp_path / "legacy.pth")
    result = _run(_convert_args(tmp_path / "legacy.pth", tmp_path / "ckpt"))
    assert result.exit_code == 0, result.output


def test_not_a_ram_checkpoint(tmp_path):
    torch.save({"model": {"conv.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    out = tmp_path / "ckpt"
    _assert_failed_cleanly(_run(_convert_args(tmp_path / "other.pth", out)), out, "other.pth", "not a RAM/RAM++ checkpoint")


def test_truncated_checkpoint(tmp_path):
    data = (_golden() / "model.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    out = tmp_path / "ckpt"
    _assert_failed_cleanly(_run(_convert_args(tmp_path / "cut.pth", out)), out, "cut.pth", "truncated")


def test_empty_checkpoint(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    out = tmp_path / "ckpt"
    _assert_failed_cleanly(_run(_convert_args(tmp_path / "empty.pth", out)), out, "empty.pth", "empty")


def test_checkpoint_with_python_objects_is_refused(tmp_path):
    import argparse

    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "pickled.pth")
    out = tmp_path / "ckpt"
    _assert_failed_cleanly(_run(_convert_args(tmp_path / "pickled.pth", out)), out, "pickled.pth", "other than tensors")


def test_tag_list_length_mismatch(tmp_path):
    tags = tmp_path / "tags.txt"
    tags.write_text("\n".join(f"tag{i}" for i in range(100)))
    out = tmp_path / "ckpt"
    _assert_failed_cleanly(_run(_convert_args(_golden(), out, tags=tags, thresholds=None)), out, "100 tags", "4585")


def test_threshold_file_wrong_length(tmp_path):
    bad = tmp_path / "thr.txt"
    bad.write_text("0.65\n" * 10)
    out = tmp_path / "ckpt"
    _assert_failed_cleanly(_run(_convert_args(_golden(), out, thresholds=bad)), out, "thr.txt", "10")


def test_threshold_file_with_non_number(tmp_path):
    lines = (_golden() / "ram_tag_list_threshold.txt").read_text().splitlines()
    lines[6] = "high"
    bad = tmp_path / "thr.txt"
    bad.write_text("\n".join(lines))
    out = tmp_path / "ckpt"
    _assert_failed_cleanly(_run(_convert_args(_golden(), out, thresholds=bad)), out, "thr.txt", "7", "high")


def test_unexpected_key_is_named(tmp_path):
    state = torch.load(_golden() / "model.pth", weights_only=True)["model"]
    state["surprise.weight"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "extra.pth")
    out = tmp_path / "ckpt"
    _assert_failed_cleanly(_run(_convert_args(tmp_path / "extra.pth", out)), out, "surprise.weight")


def test_missing_tagging_key_is_named(tmp_path):
    state = torch.load(_golden() / "model.pth", weights_only=True)["model"]
    del state["tagging_head.encoder.layer.1.output.dense.bias"]
    torch.save({"model": state}, tmp_path / "missing.pth")
    out = tmp_path / "ckpt"
    _assert_failed_cleanly(_run(_convert_args(tmp_path / "missing.pth", out)), out, "tagging_head.encoder.layer.1.output.dense.bias")


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "ckpt"
    assert _run(_convert_args(_golden(), out)).exit_code == 0
    result = _run(_convert_args(_golden(), out))
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert _run(_convert_args(_golden(), out) + ["--overwrite"]).exit_code == 0


def test_default_threshold_is_068_without_file(tmp_path):
    out = tmp_path / "ckpt"
    assert _run(_convert_args(_golden(), out, thresholds=None)).exit_code == 0
    values = np.array([float(v) for v in (out / "thresholds.txt").read_text().split()], np.float32)
    assert values.shape == (4585,) and np.all(values == np.float32(0.68))
