"""What results record about the machine: the CPU-kernel variables that change the last bits."""

from rlheal.provenance import CPU_KERNEL_VARIABLES, environment


def test_environment_records_the_cpu_kernel_variables_that_are_set(monkeypatch):
    for name in CPU_KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert environment()["cpu_env"] == {}
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.setenv("UNRELATED_VARIABLE", "1")
    assert environment()["cpu_env"] == {"MKL_CBWR": "AVX2"}
