import pytest

from uzram.zram.sizeclass import build_class_table, class_index, zspage_chain_size


@pytest.mark.parametrize("chain,classes,huge", [(4, 69, 3257), (8, 119, 3625), (16, 192, 3833)])
def test_table_matches_zsmalloc(chain, classes, huge):
    t = build_class_table(chain)
    assert len(t.specs) == classes
    assert t.huge_class_size == huge
    # every class index is served by a class at least as large
    for i, served in enumerate(t.index_map):
        assert served >= i


@pytest.mark.parametrize("size,pages,objs", [
    (32, 1, 128), (48, 3, 256), (80, 5, 256), (1024, 1, 4), (2720, 2, 3), (3072, 3, 4),
    (3264, 4, 5), (3408, 5, 6), (3632, 8, 9), (4096, 1, 1),
])
def test_documented_chain_sizes(size, pages, objs):
    assert zspage_chain_size(size, 8) == pages
    assert pages * 4096 // size == objs


def test_request_rounding():
    t = build_class_table(8)
    spec = {s.index: s for s in t.specs}
    # the 8-byte handle is added before the lookup
    assert spec[t.for_request(24)].size == 32
    assert spec[t.for_request(25)].size >= 48
    assert spec[t.for_request(4096)].huge
    assert spec[t.for_request(3624)].size == 3632
    assert class_index(10**6) == 254


def test_chain_size_bounds():
    with pytest.raises(ValueError):
        build_class_table(3)
    with pytest.raises(ValueError):
        build_class_table(17)
