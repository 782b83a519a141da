"""`convert_precision`: a GGUF rewritten at f32 / f16 / bf16 holds the source's dequantized values,
rounded as torch rounds them (bf16: the weights our bf16 target runs), with its metadata intact."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from jetspec.bench.gguf_precision import convert_precision, default_gguf
from jetspec.core.errors import CheckpointError

Q = gguf.GGMLQuantizationType


def write_source(path):
    """A small llama-like GGUF: a Q8_0 matrix, an F16 matrix, an F32 norm, string and array metadata."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_string("general.name", "tiny")
    w.add_array("general.languages", ["en", "fr"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    matrix = rng.standard_normal((8, 64), dtype=np.float32)
    w.add_tensor("blk.0.ffn_down.weight", gguf.quants.quantize(matrix, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((4, 32)).astype(np.float16))
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(32).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def values(reader):
    return {t.name: (t.tensor_type, gguf.quants.dequantize(t.data, t.tensor_type)) for t in reader.tensors}


@pytest.mark.parametrize("precision,matrix_type", [("f32", Q.F32), ("f16", Q.F16), ("bf16", Q.BF16)])
def test_every_matrix_is_the_dequantized_source_at_the_precision(tmp_path, precision, matrix_type):
    write_source(tmp_path / "src.gguf")
    convert_precision(tmp_path / "src.gguf", tmp_path / "out.gguf", precision)
    src, out = (gguf.GGUFReader(str(tmp_path / n)) for n in ("src.gguf", "out.gguf"))
    before, after = values(src), values(out)
    assert list(after) == list(before)
    for name, (kind, v) in after.items():
        exact = before[name][1]  # float32 values of the source
        assert v.shape == exact.shape
        if name.endswith("norm.weight"):  # 1-D: stays float32
            assert kind == Q.F32 and np.array_equal(v, exact)
            continue
        assert kind == matrix_type
        rounded = torch.from_numpy(exact).to({"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[precision])
        assert np.array_equal(v, rounded.float().numpy()), name
    fields = out.fields
    assert fields["general.name"].contents() == "tiny" and fields["general.languages"].contents() == ["en", "fr"]
    assert fields["llama.block_count"].contents() == 1
    expected_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}
    assert fields["general.file_type"].contents() == expected_type[precision]


def test_an_unknown_precision_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="unknown GGUF precision 'q5'; choose one of q4_1, f32, bf16, f16"):
        default_gguf("q5", cache_dir=tmp_path)
