"""The readers' verdict on single records: what is accepted, and the reason for what is not."""

import base64
import os
import pickle

import pytest

from cnclip_scale.data import seed_formats as sf
from cnclip_scale.data.image_check import check_image
from tests.helpers.images import make_image


def reason(fn, *args):
    with pytest.raises(sf.BadRecord) as caught:
        fn(*args)
    return caught.value.reason


def test_base64_standard_and_urlsafe_decode_to_the_same_bytes():
    data = next(d for d in (make_image(i, 48)[0] for i in range(50)) if b"/" in base64.b64encode(d))
    assert sf.decode_base64(base64.b64encode(data)) == data
    assert sf.decode_base64(base64.urlsafe_b64encode(data)) == data


@pytest.mark.parametrize(
    "text, why",
    [
        (b"QUJD$EFG", "invalid_base64"),
        (b"QUJDR", "invalid_base64"),
        (b"QUJD\xffRA==", "non_utf8"),
        (b"QU JD", "invalid_base64"),
    ],
)
def test_bad_base64(text, why):
    assert reason(sf.decode_base64, text) == why


@pytest.mark.parametrize(
    "line, why",
    [
        (b"  \r\n", "blank_line"),
        (b"123\n", "missing_base64_field"),
        (b"123\t\n", "missing_base64_field"),
        (b"1\tQUJD\tx\n", "extra_fields"),
        (b"1\t\tQUJD\n", "extra_fields"),
        (b"\xff1\tQUJD\n", "non_utf8"),
        (b"1\tQUJD*\n", "invalid_base64"),
        (b"\tQUJD\n", "missing_base64_field"),
    ],
)
def test_bad_tsv_lines(line, why):
    assert reason(sf.read_tsv_image, line) == why


def test_tsv_line_is_stripped_like_chinese_clip():
    assert sf.read_tsv_image(b" 42 \tQUJD\r\n") == ("42", b"ABC")
    assert sf.tsv_line_id(b" 42 \tQUJD\r\n") == "42"


def test_tsv_index_is_the_same_however_the_file_is_cut(tmp_path):
    lines = [b"1\tQUJD\n", b"\n", b"22\t" + b"QUJD" * 10 + b"\n", b" 3 \tQUJD\r\n", b"\xff\tQUJD\n", b"4\tQUJD"]
    path = str(tmp_path / "x.tsv")
    (tmp_path / "x.tsv").write_bytes(b"".join(lines))
    assert [(n, o, bytes(line)) for n, o, line in sf.iter_tsv_lines(path)] == [
        (1, 0, lines[0]),
        (2, 7, lines[1]),
        (3, 8, lines[2]),
        (4, 52, lines[3]),
        (5, 62, lines[4]),
        (6, 69, lines[5]),
    ]
    whole = [(0, 7, "1"), (7, 1, None), (8, 44, "22"), (52, 10, "3"), (62, 7, None), (69, 6, "4")]
    for parts in (1, 2, 3, 5, 40):
        cuts = sf.tsv_line_starts(path, parts)
        assert [row for a, b in zip(cuts, cuts[1:]) for row in sf.scan_tsv(path, a, b)] == whole
    (tmp_path / "empty.tsv").write_bytes(b"")
    assert sf.scan_tsv(str(tmp_path / "empty.tsv"), 0, 0) == []


@pytest.mark.parametrize(
    "line, why",
    [
        (b"{", "invalid_json"),
        (b"[1]", "invalid_json"),
        (b'{"text": "a", "image_ids": [1]}', "missing_field"),
        (b'{"text_id": 1, "image_ids": [1]}', "missing_field"),
        (b'{"text_id": 1, "text": "a"}', "missing_field"),
        (b'{"text_id": true, "text": "a", "image_ids": [1]}', "bad_field_type"),
        (b'{"text_id": 1, "text": 5, "image_ids": [1]}', "bad_field_type"),
        (b'{"text_id": 1, "text": " ", "image_ids": [1]}', "empty_text"),
        (b'{"text_id": 1, "text": "a", "image_ids": [[1]]}', "bad_field_type"),
        (b'{"text_id": 1, "text": "\xe9"}', "non_utf8"),
        (b"\n", "blank_line"),
    ],
)
def test_bad_text_lines(line, why):
    assert reason(sf.parse_text_line, line) == why


def test_a_text_without_image_ids_is_a_query_not_an_error():
    """The seed README leaves `"image_ids": []` for test texts: a query without ground truth."""
    assert sf.parse_text_line('{"text_id": 7, "text": "查询", "image_ids": []}'.encode()) == sf.TextRecord(
        7, "查询", ()
    )


@pytest.mark.parametrize(
    "line, ids",
    [
        (b'{"text_id": 8428, "image_ids": [1]}', {"text_id": 8428}),  # no text: the id it had is still named
        (b'{"text_id": "q1", "text": "a"}', {"text_id": "q1"}),
        (b'{"text_id": 5, "text": " ", "image_ids": [1]}', {"text_id": 5}),
        (b'{"text_id": 5, "text": "a", "image_ids": "1"}', {"text_id": 5}),
        (b'{"text": "a", "image_ids": [1]}', {}),
        (b'{"text_id": true, "text": "a", "image_ids": [1]}', {}),
    ],
)
def test_bad_text_lines_name_the_id_they_have(line, ids):
    with pytest.raises(sf.BadRecord) as caught:
        sf.parse_text_line(line)
    assert caught.value.ids == ids


@pytest.mark.parametrize(
    "line, named",
    [
        (b"9000004\n", "9000004"),  # no TAB: the line is the id
        (b" 9000004 \r\n", "9000004"),
        (b"123\t\n", "123"),
        (b"1\tQUJD*\n", "1"),
        (b"\tQUJD\n", None),  # empty id field
        (b"\xff1\tQUJD\n", None),  # not UTF-8
        (b"Q" * 5000 + b"\n", None),  # base64 without id or TAB
        (b"  \r\n", None),
    ],
)
def test_rejected_tsv_lines_name_their_id(line, named):
    assert sf.tsv_line_named_id(line) == named


def test_text_line_ids_become_strings_for_the_join():
    record = sf.parse_text_line('{"text_id": 8428, "text": "高级感托特包斜挎", "image_ids": [1076345, "x9"]}'.encode())
    assert record == sf.TextRecord(8428, "高级感托特包斜挎", ("1076345", "x9"))


def test_pair_pickles_as_chinese_clip_writes_them_are_accepted():
    assert sf.unpickle_pair(pickle.dumps((1076345, 8428, "高级感托特包斜挎"))) == ("1076345", 8428, "高级感托特包斜挎")


class _Payload:  # what an attacker would pickle: unpickling it runs os.system
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_crafted_pickle_is_rejected_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps((1, 2, _Payload(marker)))
    assert reason(sf.unpickle_pair, payload) == "unsafe_pickle"
    assert not marker.exists()
    pickle.loads(payload)  # the same bytes with the stock unpickler do run: the test is real
    assert marker.exists()


@pytest.mark.parametrize(
    "value, why",
    [
        ([1, 2, "a"], "bad_pair"),
        ((1, 2), "bad_pair"),
        ((1, 2, b"a"), "bad_field_type"),
        ((1.5, 2, "a"), "bad_field_type"),
        ((1, None, "a"), "bad_field_type"),
    ],
)
def test_pairs_that_are_not_int_str_tuples(value, why):
    assert reason(sf.unpickle_pair, pickle.dumps(value)) == why


def test_broken_pickle():
    assert reason(sf.unpickle_pair, b"\x80\x04garbage") == "bad_pickle"


def test_image_checks_by_format():
    jpeg = make_image(1, 96)[0]
    png = make_image(1, 32, fmt="PNG")[0]
    webp = make_image(1, 32, fmt="WEBP")[0]
    assert [check_image(d) for d in (jpeg, png, webp)] == ["jpg", "png", "webp"]
    for data in (jpeg[: len(jpeg) * 2 // 3], png[:-20], webp[:-30]):
        assert reason(check_image, data) == "truncated_image"
    assert reason(check_image, b"GIF8 nope") == "not_an_image"
    assert reason(check_image, b"") == "not_an_image"


def test_full_verify_catches_damage_the_cheap_check_cannot_see():
    jpeg = bytearray(make_image(1, 96)[0])
    jpeg[len(jpeg) // 2 : len(jpeg) // 2 + 400] = b"\xff\xc4" * 200  # scan data wrecked, end marker intact
    assert check_image(bytes(jpeg)) == "jpg"
    assert reason(check_image, bytes(jpeg), True) == "corrupt_image"


def test_fast_jpeg_and_png_checks_agree_with_pil_on_damage():
    jpeg, png = make_image(2, 96)[0], make_image(2, 32, fmt="PNG")[0]
    assert reason(check_image, jpeg[:40]) == "truncated_image"  # cut inside the header
    assert reason(check_image, png[:20]) == "truncated_image"
    broken = jpeg[:2] + b"\x00" + jpeg[3:]
    assert reason(check_image, broken) == "not_an_image"
    assert reason(check_image, b"\xff\xd8\xff\xda" + jpeg[4:]) == "not_an_image"  # scan before any frame
    for data in (jpeg, png):
        assert check_image(data) == check_image(data, full=True)


def test_tar_headers_are_what_tarfile_writes():
    import tarfile

    from cnclip_scale.shards.writer import ustar_header

    for name, size in [("1000000.jpg", 123457), ("k" * 95 + ".json", 0), ("_h" + "0" * 40 + ".webp", 8**11 - 1)]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o444
        assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT)
    with pytest.raises(ValueError):
        ustar_header("图.jpg", 1)
