"""Loading models: dotted paths, Hugging Face folders, the local hub cache, example inputs."""
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

import t2n
from t2n.errors import LoadError, OptionError
from t2n.load import load_model, parse_input_shape, read_example_inputs


def _tiny_bert(folder):
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        architectures=["BertModel"])
    BertModel(config).save_pretrained(folder)
    return folder


def _cache(hf_home, repo_id, source):
    """Lay out a Hugging Face hub cache entry the way huggingface_hub writes one."""
    org, name = repo_id.split("/")
    entry = hf_home / "hub" / f"models--{org}--{name}"
    snapshot = entry / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("0" * 40)


def test_hub_id_from_local_cache(tmp_path, monkeypatch):
    _cache(tmp_path / "hf", "acme/tiny-bert", _tiny_bert(tmp_path / "src"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    loaded = load_model("acme/tiny-bert", input_shapes=["input_ids=1,8:i64"])
    assert type(loaded.module).__name__ == "BertModel"
    assert loaded.kwargs["input_ids"].dtype == torch.int64
    assert int(loaded.kwargs["input_ids"].max()) < 100  # random ids stay in the vocabulary
    result = t2n.export(loaded.module, (), tmp_path / "out", kwargs=loaded.kwargs)
    assert result.verification.passed


def test_task_overrides_class(tmp_path):
    folder = _tiny_bert(tmp_path / "bert")
    loaded = load_model(str(folder), task="fill-mask", input_shapes=["input_ids=1,8:i64"])
    assert type(loaded.module).__name__ == "BertForMaskedLM"
    with pytest.raises(OptionError, match="unknown task"):
        load_model(str(folder), task="summon")


@pytest.mark.parametrize("dtype, expected", [(None, torch.float32), ("f32", torch.float32),
                                             ("f16", torch.float16)])
def test_folder_loads_in_the_export_dtype(tmp_path, dtype, expected):
    # an f16 export loads f16 weights directly: no float32 copy of the model is ever made
    folder = _tiny_bert(tmp_path / "bert")
    loaded = load_model(str(folder), input_shapes=["input_ids=1,8:i64"], dtype=dtype)
    assert {p.dtype for p in loaded.module.parameters()} == {expected}
    with pytest.raises(OptionError, match="unknown dtype"):
        load_model(str(folder), dtype="f8")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_example_inputs_file(suffix, tmp_path):
    arrays = {"x": np.random.rand(2, 3).astype(np.float32), "ids": np.arange(4)}
    path = tmp_path / f"inputs{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        from safetensors.numpy import save_file
        save_file(arrays, str(path))
    back = read_example_inputs(path)
    assert list(back) == ["x", "ids"] if suffix == ".npz" else set(back) == {"x", "ids"}
    np.testing.assert_array_equal(back["x"].numpy(), arrays["x"])


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(LoadError, match="cannot read example inputs"):
        read_example_inputs(path)


@pytest.mark.parametrize("text,shape,dtype", [
    ("x=1,3,224,224", (1, 3, 224, 224), torch.float32),
    ("input_ids=1,8:i64", (1, 8), torch.int64),
    ("m = 2 , 2 : bool", (2, 2), torch.bool)])
def test_parse_input_shape(text, shape, dtype):
    spec = parse_input_shape(text)
    assert spec.shape == shape and spec.dtype == dtype


def test_folder_without_config(tmp_path):
    with pytest.raises(LoadError, match="no config.json"):
        load_model(str(tmp_path))
