"""Safe archive reading: good archives open, each kind of hostile archive is refused."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from sdserve.errors import InvalidInput
from sdserve.training.archive import ArchiveLimits, read_archive, sniff_archive


def png(color: tuple[int, int, int] = (200, 30, 30), size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """(images folder of a job, the jobs folder): nothing may appear beside the job."""
    parent = tmp_path / "jobs"
    parent.mkdir()
    return parent / "job-1" / "images", parent


def assert_nothing_outside(sandbox: tuple[Path, Path]) -> None:
    dest, parent = sandbox
    job = dest.parent
    for path in parent.parent.rglob("*"):
        assert path in (parent, job) or path.is_relative_to(job), f"written outside: {path}"


# -- archives that work ---------------------------------------------------------------


def test_zip_with_captions_subfolders_and_os_clutter(sandbox: tuple[Path, Path]) -> None:
    dest, _ = sandbox
    data = make_zip(
        {
            "dog/b.png": png((0, 0, 255)),
            "dog/b.txt": b"a photo of TOK on grass\n",
            "dog/a.jpg": _jpeg(),
            "__MACOSX/dog/._a.jpg": b"\x00\x05\x16\x07 resource fork",
            ".DS_Store": b"\x00\x00\x00\x01Bud1",
        }
    )
    images = read_archive(data, dest)
    assert [image.name for image in images] == ["dog/a.jpg", "dog/b.png"]
    assert images[0].caption is None
    assert images[1].caption == "a photo of TOK on grass"
    for image in images:
        assert image.path.parent == dest  # generated names inside the job folder
        with Image.open(image.path) as opened:
            opened.load()
    assert_nothing_outside(sandbox)


def test_tar_gz_opens_like_a_zip(sandbox: tuple[Path, Path]) -> None:
    dest, _ = sandbox
    data = make_tar([("one.png", png()), ("one.txt", b"TOK")], mode="w:gz")
    assert sniff_archive(data) == "tar"
    images = read_archive(data, dest)
    assert len(images) == 1 and images[0].caption == "TOK"


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), (10, 200, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


# -- hostile archives -----------------------------------------------------------------


def refused(data: bytes, sandbox: tuple[Path, Path], limits: ArchiveLimits | None = None) -> str:
    dest, _ = sandbox
    with pytest.raises(InvalidInput) as caught:
        read_archive(data, dest, limits=limits)
    assert caught.value.field == "input_images"
    assert_nothing_outside(sandbox)
    return caught.value.message


def test_zip_path_traversal_is_refused(sandbox: tuple[Path, Path]) -> None:
    message = refused(make_zip({"ok.png": png(), "../evil.png": png()}), sandbox)
    assert "'../evil.png' points outside the archive" in message
    assert not (sandbox[1] / "evil.png").exists()


def test_tar_path_traversal_deep_is_refused(sandbox: tuple[Path, Path]) -> None:
    message = refused(make_tar([("a/../../../evil.png", png())]), sandbox)
    assert "points outside the archive" in message


@pytest.mark.parametrize("name", ["/etc/evil.png", "C:/evil.png", "\\\\server\\evil.png"])
def test_absolute_paths_are_refused(name: str, sandbox: tuple[Path, Path]) -> None:
    assert "is an absolute path" in refused(make_zip({name: png()}), sandbox)


def test_absolute_path_in_tar_is_refused(sandbox: tuple[Path, Path]) -> None:
    assert "is an absolute path" in refused(make_tar([("/tmp/evil.png", png())]), sandbox)


def test_zip_symlink_is_refused(sandbox: tuple[Path, Path]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    assert "is a symbolic link" in refused(buffer.getvalue(), sandbox)


def test_tar_symlink_is_refused(sandbox: tuple[Path, Path]) -> None:
    link = tarfile.TarInfo("photo.png")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    assert "is a symbolic link" in refused(make_tar([link]), sandbox)


def test_tar_hardlink_is_refused(sandbox: tuple[Path, Path]) -> None:
    link = tarfile.TarInfo("photo.png")
    link.type = tarfile.LNKTYPE
    link.linkname = "../../etc/passwd"
    assert "is a hard link" in refused(make_tar([("a.png", png()), link]), sandbox)


def test_tar_device_file_is_refused(sandbox: tuple[Path, Path]) -> None:
    device = tarfile.TarInfo("dev.png")
    device.type = tarfile.CHRTYPE
    assert "is not a regular file" in refused(make_tar([device]), sandbox)


def test_too_many_members_is_refused(sandbox: tuple[Path, Path]) -> None:
    members = {f"{index}.txt": b"x" for index in range(6)}
    message = refused(make_zip(members), sandbox, ArchiveLimits(max_members=5))
    assert "more than 5 files" in message


def test_zip_bomb_by_declared_size_is_refused(sandbox: tuple[Path, Path]) -> None:
    # 20 MB of zeros compresses to a few KB: the declared size gives it away
    data = make_zip({"bomb.png": b"\x00" * 20_000_000})
    assert len(data) < 100_000
    message = refused(data, sandbox, ArchiveLimits(max_member_bytes=1_000_000))
    assert "declares 20000000 bytes" in message


def test_zip_bomb_lying_about_its_size_is_refused(sandbox: tuple[Path, Path]) -> None:
    """A member whose headers claim 100 bytes but whose stream inflates to megabytes."""
    honest = make_zip({"bomb.png": b"\x00" * 5_000_000})
    lying = _patch_zip_sizes(honest, b"bomb.png", declared=100)
    message = refused(lying, sandbox, ArchiveLimits(max_member_bytes=1_000_000))
    assert "bomb.png" in message


def test_total_bytes_over_the_limit_is_refused(sandbox: tuple[Path, Path]) -> None:
    data = make_zip({f"{index}.png": png(size=64) for index in range(4)})
    one = len(png(size=64))
    message = refused(data, sandbox, ArchiveLimits(max_total_bytes=one * 2 + 1))
    assert "more than the limit" in message or "more than the byte limit" in message


def test_tar_gz_bomb_is_refused(sandbox: tuple[Path, Path]) -> None:
    data = make_tar([("big.png", b"\x00" * 3_000_000)], mode="w:gz")
    message = refused(data, sandbox, ArchiveLimits(max_member_bytes=1_000_000))
    assert "big.png" in message


def test_non_image_member_is_refused(sandbox: tuple[Path, Path]) -> None:
    message = refused(make_zip({"a.png": png(), "run.sh": b"#!/bin/sh\nrm -rf /\n"}), sandbox)
    assert "'run.sh' is not an image or a .txt caption" in message


def test_corrupt_image_is_refused(sandbox: tuple[Path, Path]) -> None:
    broken = png()[:40]
    assert "'face.png' is not a readable image" in refused(make_zip({"face.png": broken}), sandbox)


def test_image_with_huge_dimensions_is_refused_before_decoding(sandbox: tuple[Path, Path]) -> None:
    message = refused(
        make_zip({"wide.png": png(size=64)}), sandbox, ArchiveLimits(max_image_pixels=32 * 32)
    )
    assert "64x64" in message


def test_not_an_archive_is_refused(sandbox: tuple[Path, Path]) -> None:
    assert "is not a .zip or .tar archive" in refused(png(), sandbox)


def test_archive_without_images_is_refused(sandbox: tuple[Path, Path]) -> None:
    assert "holds no images" in refused(make_zip({"notes.txt": b"hello"}), sandbox)


def _patch_zip_sizes(data: bytes, name: bytes, *, declared: int) -> bytes:
    """Rewrite the uncompressed size of ``name`` in its local and central headers."""
    raw = bytearray(data)
    local = raw.find(b"PK\x03\x04")
    raw[local + 22 : local + 26] = declared.to_bytes(4, "little")
    central = raw.find(b"PK\x01\x02")
    raw[central + 24 : central + 28] = declared.to_bytes(4, "little")
    assert raw[central + 46 : central + 46 + len(name)] == name
    return bytes(raw)
