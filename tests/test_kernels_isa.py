"""kernels.isa: the vector width and L2 size the kernels' blocking is derived from."""

from kernels import isa


def test_vector_width_follows_the_flags(monkeypatch):
    assert isa.vector_bits() in (128, 256, 512)
    monkeypatch.setattr(isa, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert isa.vector_bits() == 512
    monkeypatch.setattr(isa, "cpu_flags", lambda: frozenset({"sse4_2", "avx2"}))
    assert isa.vector_bits() == 256
    monkeypatch.setattr(isa, "cpu_flags", lambda: frozenset())
    assert isa.vector_bits() == 128


def test_l2_size_is_read_or_defaulted(tmp_path, monkeypatch):
    assert isa.l2_bytes() >= 64 * 1024
    for level, size in (("1", "48K"), ("2", "2048K"), ("3", "32M")):
        index = tmp_path / f"index{level}"
        index.mkdir()
        (index / "level").write_text(level + "\n")
        (index / "size").write_text(size + "\n")
    monkeypatch.setattr(isa, "_CACHE_DIR", tmp_path)
    isa.l2_bytes.cache_clear()
    try:
        assert isa.l2_bytes() == 2048 * 1024
        monkeypatch.setattr(isa, "_CACHE_DIR", tmp_path / "missing")
        isa.l2_bytes.cache_clear()
        assert isa.l2_bytes() == isa.DEFAULT_L2_BYTES
    finally:
        monkeypatch.undo()
        isa.l2_bytes.cache_clear()
