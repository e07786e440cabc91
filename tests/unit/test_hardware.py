import pytest

from kaggle_kit.errors import ConfigError, KitError
from kaggle_kit.hardware import check_cuda_arch, cpu_has_native_bf16, detect, dtype_for_capability


@pytest.mark.parametrize(
    "cap,dtype",
    [((7, 5), "float16"), ((6, 0), "float16"), ((7, 0), "float16"), ((8, 0), "bfloat16"), ((9, 0), "bfloat16")],
)
def test_gpu_dtype_by_capability(cap, dtype):
    assert dtype_for_capability(*cap) == dtype


def test_p100_without_sm60_kernels_fails_fast():
    with pytest.raises(KitError, match="sm_60"):
        check_cuda_arch(6, 0, ["sm_75", "sm_80", "sm_90"])
    check_cuda_arch(7, 5, ["sm_75", "sm_80"])  # T4 is fine
    check_cuda_arch(8, 6, ["sm_80", "sm_90"])  # sm_86 runs sm_80 kernels


def test_cpu_profile_and_override():
    p = detect(device="cpu")
    assert p.device == "cpu" and p.dtype in ("float32", "bfloat16")
    assert p.bnb_4bit()["bnb_4bit_quant_type"] == "nf4"
    assert detect(dtype="float32", device="cpu").dtype == "float32"
    with pytest.raises(ConfigError, match="dtype"):
        detect(dtype="float8")


def test_cpu_bf16_is_decided_by_flags():
    """Regression: the choice was a timing race, so two worker processes could pick different dtypes."""
    zen4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\nbogomips\t: 4800\n"
    avx2 = "processor\t: 0\nflags\t\t: fpu avx2 fma\nmodel name\t: AMD EPYC avx512_bf16-like name\n"
    assert cpu_has_native_bf16(zen4)
    assert cpu_has_native_bf16(zen4.replace("avx512_bf16", "amx_bf16"))
    assert not cpu_has_native_bf16(avx2)  # a flag-like word outside the flags line does not count
    assert detect(device="cpu") == detect(device="cpu")
