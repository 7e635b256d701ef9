"""The Go builder takes each program's version from the pinned image, so bumping a tag in
configs/images.yaml changes what CI builds and boots."""

import yaml

from tests.integration import gobuild


def test_versions_come_from_the_pinned_images():
    images = yaml.safe_load(gobuild.IMAGES_FILE.read_text())
    entries = yaml.safe_load(gobuild.PROGRAMS_FILE.read_text())
    programs = gobuild.programs()
    assert set(programs) == set(entries)
    for name, entry in entries.items():
        if "image" in entry:
            tag = images[entry["image"]].rpartition(":")[2]
            assert programs[name].version.lstrip("v") == tag.lstrip("v"), name


def test_a_bumped_tag_changes_the_build_and_its_cache_key(tmp_path, monkeypatch):
    (tmp_path / "images.yaml").write_text("svc: example.org/svc:1.2.3\n")
    (tmp_path / "programs.yaml").write_text(
        "svc: {image: svc, module: example.org/svc, package: example.org/svc/cmd/svc, tags: [a, b]}\n"
        "tool: {version: 0.4.0, module: example.org/tool}\n")
    monkeypatch.setenv("COMMSTACK_CACHE", str(tmp_path / "cache"))
    progs = gobuild.programs(tmp_path / "programs.yaml", tmp_path / "images.yaml")
    assert progs["svc"].version == "v1.2.3"
    assert progs["tool"].version == "v0.4.0"
    assert gobuild.cached_path(progs["svc"]) == tmp_path / "cache" / "go" / "svc" / "v1.2.3+a,b" / "svc"
    (tmp_path / "images.yaml").write_text("svc: example.org/svc:1.2.4\n")
    bumped = gobuild.programs(tmp_path / "programs.yaml", tmp_path / "images.yaml")["svc"]
    assert gobuild.cached_path(bumped) != gobuild.cached_path(progs["svc"])


def test_a_tag_whose_system_library_is_missing_fails_with_the_apt_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMSTACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(gobuild.TAG_HEADERS, "libexample", (str(tmp_path / "example.h"), "libexample-dev"))
    program = gobuild.GoProgram(name="svc", module="example.org/svc", package="example.org/svc/cmd/svc",
                                version="v1.2.3", tags=("libexample",), cgo=True)
    try:
        gobuild.build(program)
    except gobuild.GoBuildError as err:
        assert "apt-get install -y libexample-dev" in str(err) and "example.h" in str(err)
    else:
        raise AssertionError("built without the library's header")
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_every_program_is_built_stripped_and_without_local_paths():
    assert "-trimpath" in gobuild.BUILD_FLAGS and "-ldflags=-s -w" in gobuild.BUILD_FLAGS
