"""Answer files: rendering (deterministic, traced to template lines), template errors, recipes that
extend recipes, the root password (file/env, hashed, never in logs) and the VM install plan."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import stat
from pathlib import Path

import pytest

from imagebuild import answerfile
from imagebuild.answerfile import (
    COMPLETION_MARKER,
    CRYPT_HASH_RE,
    PLACEHOLDER_HASH,
    TEMPLATE_DIR,
    AnswerFileError,
    AnswerFileKind,
    check_answer_file,
    hash_password,
    prepare_answer_file,
    read_root_password,
    render_answer_file,
    validate_recipe,
)
from imagebuild.errors import RecipeError
from imagebuild.events import Reporter
from imagebuild.install.vm_plan import describe_vm_install
from imagebuild.recipe import PROJECT_ROOT, load_recipe

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "kickstarts" / "golden"
RECIPES = PROJECT_ROOT / "recipes"
CANARY = "Canary-5f3e9a1c-NeverLogMe!"


def template_line(name: str, pattern: str) -> int:
    lines = (TEMPLATE_DIR / name).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if re.search(pattern, line))


def with_vm(recipe, **changes):
    vm = dataclasses.replace(recipe.install.vm, **changes)
    return dataclasses.replace(recipe, install=dataclasses.replace(recipe.install, vm=vm))


# -- the shipped recipes ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["centos7", "debian12-preseed", "rocky9", "almalinux9"])
def test_shipped_vm_recipes_render_and_validate(name):
    out = io.StringIO()
    validate_recipe(load_recipe(name), Reporter(out))
    assert "syntax and golden policy OK" in out.getvalue()


@pytest.mark.parametrize("name,golden", [("centos7", "centos7.ks"), ("debian12-preseed", "debian12.preseed")])
def test_rendered_answer_file_matches_golden(name, golden):
    """Golden files for the rendered text (UPDATE_GOLDEN=1 rewrites them after a deliberate change)."""
    text = render_answer_file(load_recipe(name)).text
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_centos7_kickstart_encodes_the_golden_rules():
    rendered = render_answer_file(load_recipe("centos7"))
    assert rendered.kind is AnswerFileKind.KICKSTART and rendered.name == "ks.cfg"
    assert rendered.syntax == "RHEL7"
    lines = rendered.text.splitlines()
    for needed in ("cmdline", "zerombr", "poweroff", "skipx",
                   "network --bootproto=dhcp --device=link --onboot=on --activate",
                   "clearpart --all --initlabel --drives=vda",
                   "part / --fstype=xfs --size=1024 --grow --ondisk=vda --asprimary",
                   "url --url=http://vault.centos.org/7.9.2009/os/x86_64/",
                   "repo --name=updates --baseurl=http://vault.centos.org/7.9.2009/updates/x86_64/",
                   f"rootpw --iscrypted {PLACEHOLDER_HASH}"):
        assert needed in lines
    assert 'bootloader --location=mbr --boot-drive=vda --timeout=1 --append="console=tty0 ' \
           'console=ttyS0,115200n8"' in lines
    packages = rendered.text.split("%packages\n", 1)[1].split("%end", 1)[0].splitlines()
    for pkg in ("net-tools", "lrzsz", "screen", "tree", "vim", "wget", "qemu-guest-agent"):
        assert pkg in packages
    assert "sed -i -e '/^HWADDR=/d' -e '/^UUID=/d' \"$f\"" in rendered.text
    assert all(line.startswith("%post --") and "--erroronfail" in line
               for line in lines if line.startswith("%post"))
    # The completion marker is printed in pieces: the file never holds it whole.
    assert COMPLETION_MARKER not in rendered.text
    assert "printf '%s%s\\n' 'IMAGEBUILD' '-INSTALL-COMPLETE' > /dev/ttyS0" in rendered.text


def test_debian_preseed_encodes_the_golden_rules():
    rendered = render_answer_file(load_recipe("debian12-preseed"))
    assert rendered.kind is AnswerFileKind.PRESEED and rendered.name == "preseed.cfg"
    assert "d-i partman-auto/method string regular" in rendered.text
    entries, _ = answerfile.parse_preseed(rendered.text)
    _, partitions = answerfile.parse_expert_recipe(entries["partman-auto/expert_recipe"].value)
    shape = [(p.max, p.keys.get("mountpoint"), p.keys.get("method")) for p in partitions]
    assert shape == [("-1", "/", "format")]
    assert "d-i pkgsel/include string net-tools lrzsz screen tree vim wget qemu-guest-agent" in rendered.text
    assert rendered.text.rstrip().endswith("d-i debian-installer/exit/poweroff boolean true")
    assert COMPLETION_MARKER not in rendered.text


def test_rendering_is_deterministic():
    r = load_recipe("centos7")
    a, b = render_answer_file(r), render_answer_file(r)
    assert a.text == b.text and a.origins == b.origins and a.sha256 == b.sha256


def test_every_rendered_line_names_its_template_line():
    rendered = render_answer_file(load_recipe("centos7"))
    lines = rendered.text.splitlines()
    assert len(rendered.origins) == len(lines)
    assert all(o is not None for o in rendered.origins)
    repo = next(i for i, line in enumerate(lines, 1) if line.startswith("repo "))
    assert str(rendered.origin(repo)) == f"kickstart/centos7.ks.j2:{template_line('centos7.ks.j2', '^repo')}"
    part = next(i for i, line in enumerate(lines, 1) if line.startswith("part /"))
    part_line = template_line("el7-base.ks.j2", "^part /")
    assert str(rendered.origin(part)) == f"kickstart/el7-base.ks.j2:{part_line}"
    # The package loop: every package line points at the loop body.
    vim = lines.index("vim") + 1
    assert rendered.origin(vim).line == template_line("el7-base.ks.j2", r"\{\{ package \}\}")
    # Each line's origin really holds that text (static lines are identical to their template line).
    for i, line in enumerate(lines, 1):
        origin = rendered.origin(i)
        source = (PROJECT_ROOT / origin.template).read_text().splitlines()[origin.line - 1]
        if "{{" not in source and "{%" not in source:
            assert source == line, (i, origin)


# -- templates written by recipe authors ---------------------------------------------------------

def custom(tmp_path: Path, body: str, name: str = "child.ks.j2", **vm_changes):
    (tmp_path / name).write_text(body)
    recipe = with_vm(load_recipe("centos7"), template=name, **vm_changes)
    return recipe, [tmp_path, TEMPLATE_DIR]


def test_policy_error_names_rendered_line_and_template_line(tmp_path):
    recipe, dirs = custom(tmp_path, '{% extends "el7-base.ks.j2" %}\n'
                                    "{% block storage %}\n"
                                    "zerombr\n"
                                    "clearpart --all --initlabel\n"
                                    'bootloader --location=mbr --append="console=ttyS0"\n'
                                    "part / --size=1024 --grow\n"
                                    "part swap --size=512\n"
                                    "{% endblock %}\n")
    rendered = render_answer_file(recipe, dirs=dirs)
    with pytest.raises(AnswerFileError) as info:
        check_answer_file(rendered)
    err = info.value
    [problem] = err.problems
    assert problem.rule == "swap"
    assert rendered.text.splitlines()[problem.line - 1] == "part swap --size=512"
    assert err.file == str(tmp_path / "child.ks.j2") and err.line == 7
    assert f"ks.cfg:{problem.line} (from {tmp_path / 'child.ks.j2'}:7): swap is not allowed" in str(err)
    assert isinstance(err, RecipeError)


def test_each_violation_is_reported_with_its_own_message(tmp_path):
    recipe, dirs = custom(tmp_path, '{% extends "el7-base.ks.j2" %}\n'
                                    "{% block storage %}\nautopart --type=lvm\n{% endblock %}\n"
                                    "{% block users %}\nrootpw changeme\n{% endblock %}\n"
                                    "{% block post_scripts %}\n%post\ntrue\n%end\n{% endblock %}\n")
    with pytest.raises(AnswerFileError) as info:
        check_answer_file(render_answer_file(recipe, dirs=dirs))
    rules = sorted(p.rule for p in info.value.problems)
    assert rules == ["autopart", "clearpart", "erroronfail", "lvm", "plaintext-rootpw", "serial-console", "swap",
                     "zerombr"]
    message = str(info.value)
    assert "has 8 problems" in message and message.count("\n  ") == 8


def test_kickstart_syntax_error_names_template_line(tmp_path):
    recipe, dirs = custom(tmp_path, '{% extends "el7-base.ks.j2" %}\n'
                                    "{% block extra_commands %}\n"
                                    "# a comment\n"
                                    "firewal --disabled\n"
                                    "{% endblock %}\n")
    rendered = render_answer_file(recipe, dirs=dirs)
    with pytest.raises(AnswerFileError) as info:
        check_answer_file(rendered)
    [problem] = info.value.problems
    assert problem.rule == "syntax" and "Unknown command: firewal" in problem.message
    assert rendered.text.splitlines()[problem.line - 1] == "firewal --disabled"
    assert (info.value.file, info.value.line) == (str(tmp_path / "child.ks.j2"), 4)


def test_undefined_variable_names_template_and_line(tmp_path):
    recipe, dirs = custom(tmp_path, '{% extends "el7-base.ks.j2" %}\n'
                                    "{% block repos %}\n"
                                    "repo --name=extra --baseurl={{ extra_url }}\n"
                                    "{% endblock %}\n")
    with pytest.raises(RecipeError) as info:
        render_answer_file(recipe, dirs=dirs)
    assert "'extra_url' is undefined" in str(info.value)
    assert "[install.vm.variables]" in str(info.value)
    assert (info.value.file, info.value.line) == (str(tmp_path / "child.ks.j2"), 3)


def test_template_syntax_error_names_line(tmp_path):
    recipe, dirs = custom(tmp_path, '{% extends "el7-base.ks.j2" %}\n'
                                    "{% block repos %}\n{% if %}\n{% endblock %}\n")
    with pytest.raises(RecipeError) as info:
        render_answer_file(recipe, dirs=dirs)
    assert "template syntax error" in str(info.value)
    assert (info.value.file, info.value.line) == (str(tmp_path / "child.ks.j2"), 3)


def test_missing_template_is_a_recipe_error():
    recipe = with_vm(load_recipe("centos7"), template="nope.ks.j2")
    with pytest.raises(RecipeError) as info:
        render_answer_file(recipe)
    assert info.value.key == "install.vm.template" and "'nope.ks.j2' not found" in str(info.value)


def test_sandbox_keeps_templates_away_from_python(tmp_path):
    recipe, dirs = custom(tmp_path, '{% extends "el7-base.ks.j2" %}\n'
                                    "{% block repos %}{{ packages.__class__.__mro__ }}{% endblock %}\n")
    with pytest.raises(RecipeError) as info:
        render_answer_file(recipe, dirs=dirs)
    assert "SecurityError" in str(info.value) or "unsafe" in str(info.value)


@pytest.mark.parametrize("value", ["UTC\nautopart", "UTC\r", "a\x00b"])
def test_variables_are_single_line(value):
    recipe = with_vm(load_recipe("centos7"),
                     variables={**load_recipe("centos7").install.vm.variables, "timezone": value})
    with pytest.raises(RecipeError) as info:
        render_answer_file(recipe)
    assert info.value.key == "install.vm.variables.timezone"


def test_builtin_variables_cannot_be_overridden():
    base = load_recipe("centos7")
    recipe = with_vm(base, variables={**base.install.vm.variables, "root_password_hash": "x"})
    with pytest.raises(RecipeError, match="set by imagebuild"):
        render_answer_file(recipe)


def test_site_mirror_map_rewrites_tree_and_url_variables():
    mirrors = {"http://vault.centos.org/": "http://mirror.site.example/vault/"}
    recipe = load_recipe("centos7")
    text = render_answer_file(recipe, mirrors=mirrors).text
    assert "url --url=http://mirror.site.example/vault/7.9.2009/os/x86_64/" in text
    assert "--baseurl=http://mirror.site.example/vault/7.9.2009/updates/x86_64/" in text
    assert "vault.centos.org" not in text
    plan = describe_vm_install(recipe, mirrors=mirrors)
    assert plan["kernel"]["url"] == "http://mirror.site.example/vault/7.9.2009/os/x86_64/images/pxeboot/vmlinuz"
    assert "inst.repo=http://mirror.site.example/vault/7.9.2009/os/x86_64/" in plan["kernel_args"]


def test_recipe_extends_recipe_and_template_extends_template(tmp_path, monkeypatch):
    """A site recipe extends centos7 and its template extends centos7's, overriding one block."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "recipes" / "centos7-web.toml").write_text(
        'extends = "centos7"\n'
        'description = "CentOS 7 with a web server"\n'
        "[install.vm]\n"
        'template = "centos7-web.ks.j2"\n'
        "[install.vm.variables]\n"
        'timezone = "Europe/Berlin"\n'
        "[packages]\n"
        'extra = ["qemu-guest-agent", "httpd"]\n')
    (tmp_path / "templates" / "centos7-web.ks.j2").write_text(
        '{% extends "centos7.ks.j2" %}\n'
        "{% block services %}\n"
        "services --enabled=sshd,httpd\n"
        "{% endblock %}\n"
        "{% block post %}\n"
        "echo 'hello' > /var/www/html/index.html\n"
        "{% endblock %}\n")
    monkeypatch.setenv("IMAGEBUILD_TEMPLATE_PATH", str(tmp_path / "templates"))
    recipe = load_recipe("centos7-web", [tmp_path / "recipes", RECIPES])
    assert recipe.install.vm.tree_url == "http://vault.centos.org/7.9.2009/os/x86_64/"  # inherited
    validate_recipe(recipe)
    rendered = render_answer_file(recipe)
    lines = rendered.text.splitlines()
    assert "services --enabled=sshd,httpd" in lines and "httpd" in lines
    assert "timezone Europe/Berlin --isUtc" in lines
    assert "repo --name=updates --baseurl=http://vault.centos.org/7.9.2009/updates/x86_64/" in lines
    post = lines.index("echo 'hello' > /var/www/html/index.html") + 1
    assert rendered.origin(post) == answerfile.Origin(str(tmp_path / "templates" / "centos7-web.ks.j2"), 6)


def test_required_packages_come_from_the_recipe(tmp_path):
    recipe, dirs = custom(tmp_path, '{% extends "el7-base.ks.j2" %}\n{% block packages_exclude %}\n-vim\n'
                                    "{% endblock %}\n")
    with pytest.raises(AnswerFileError) as info:
        check_answer_file(render_answer_file(recipe, dirs=dirs), required_packages=recipe.packages.all)
    assert [p.rule for p in info.value.problems] == ["packages"]
    assert "package 'vim' from the recipe is excluded" in str(info.value)


def test_bootstrap_recipes_need_no_answer_file():
    validate_recipe(load_recipe("debian12"))  # a no-op
    with pytest.raises(RecipeError):
        render_answer_file(load_recipe("debian12"))


# -- the root password -----------------------------------------------------------------------------

def test_password_from_env_or_file(tmp_path):
    recipe = load_recipe("centos7")
    assert read_root_password(recipe, environ={}) is None
    assert read_root_password(recipe, environ={"IMAGEBUILD_ROOT_PASSWORD": "s3cret"}) == "s3cret"
    secret = tmp_path / "rootpw"
    secret.write_text("from-file\n")
    secret.chmod(0o600)
    from_file = with_vm(recipe, root_password_file=str(secret))
    assert read_root_password(from_file, environ={"IMAGEBUILD_ROOT_PASSWORD": "s3cret"}) == "from-file"
    secret.write_text("")
    with pytest.raises(RecipeError, match="empty"):
        read_root_password(from_file, environ={})
    secret.write_text("two\nlines\n")
    with pytest.raises(RecipeError, match="one line"):
        read_root_password(from_file, environ={})
    with pytest.raises(RecipeError, match="cannot read"):
        read_root_password(with_vm(recipe, root_password_file=str(tmp_path / "missing")), environ={})


def test_world_readable_password_file_is_warned_about(tmp_path):
    secret = tmp_path / "rootpw"
    secret.write_text("pw\n")
    secret.chmod(0o644)
    out = io.StringIO()
    read_root_password(with_vm(load_recipe("centos7"), root_password_file=str(secret)),
                       reporter=Reporter(out))
    assert "readable by other users" in out.getvalue() and "pw\n" not in out.getvalue()


def test_hash_password_is_sha512_crypt_and_reproducible_with_a_salt():
    h = hash_password("correct horse", salt="abcdefgh")
    assert h.startswith("$6$abcdefgh$") and CRYPT_HASH_RE.match(h)
    assert hash_password("correct horse", salt="abcdefgh") == h
    assert hash_password("correct horse", salt="abcdefgh") != hash_password("other", salt="abcdefgh")
    assert hash_password("correct horse") != hash_password("correct horse")  # random salt
    with pytest.raises(ValueError):
        hash_password("x", salt="bad salt!")


def test_password_canary_never_leaves_the_hash(tmp_path, monkeypatch):
    """The password is never on argv, in the build log, the event stream, the terminal, the rendered
    answer file, its redacted form or the plan; only its crypted hash is written."""
    argvs: list[list[str]] = []
    real_run = answerfile.password.run

    def spy(argv, **kw):
        argvs.append([str(a) for a in argv])
        return real_run(argv, **kw)

    monkeypatch.setattr(answerfile.password, "run", spy)
    out = io.StringIO()
    reporter = Reporter(out, verbose=True)
    reporter.attach(tmp_path / "build.log", tmp_path / "events.jsonl")
    recipe = load_recipe("centos7")
    rendered = prepare_answer_file(recipe, reporter, environ={"IMAGEBUILD_ROOT_PASSWORD": CANARY})
    with reporter.step("validate"):
        validate_recipe(recipe, reporter, environ={"IMAGEBUILD_ROOT_PASSWORD": CANARY})
    reporter.close()
    written = rendered.write(tmp_path)

    hashed = re.search(r"^rootpw --iscrypted (\S+)$", rendered.text, re.M).group(1)
    assert CRYPT_HASH_RE.match(hashed) and hashed != PLACEHOLDER_HASH
    salt = hashed.split("$")[2]
    assert hash_password(CANARY, salt=salt) == hashed  # it is the hash of the canary
    assert argvs and all(CANARY not in a for argv in argvs for a in argv)
    for text in (out.getvalue(), (tmp_path / "build.log").read_text(),
                 (tmp_path / "events.jsonl").read_text(), rendered.text, rendered.redacted(),
                 written.read_text(), repr(rendered),
                 json.dumps(describe_vm_install(recipe))):
        assert CANARY not in text
    assert hashed not in rendered.redacted() and "<redacted>" in rendered.redacted()
    assert hashed not in (tmp_path / "build.log").read_text()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_build_requires_password_and_pins():
    recipe = with_vm(load_recipe("centos7"), media_trust="pinned")
    with pytest.raises(RecipeError) as info:
        validate_recipe(recipe, for_build=True, environ={"IMAGEBUILD_ROOT_PASSWORD": "pw"})
    assert info.value.key == "install.vm.kernel_sha256"
    pinned = with_vm(recipe, kernel_sha256="a" * 64, initrd_sha256="b" * 64)
    with pytest.raises(RecipeError) as info:
        validate_recipe(pinned, for_build=True, environ={})
    assert "no root password" in str(info.value) and "IMAGEBUILD_ROOT_PASSWORD" in str(info.value)
    validate_recipe(pinned, for_build=True, environ={"IMAGEBUILD_ROOT_PASSWORD": "pw"})
    with pytest.raises(RecipeError, match="no root password"):
        prepare_answer_file(pinned, environ={})


def test_validate_without_password_only_warns():
    out = io.StringIO()
    validate_recipe(with_vm(load_recipe("centos7"), media_trust="pinned"), Reporter(out), environ={})
    assert "warning: no root password" in out.getvalue()
    assert "warning: install.vm.kernel_sha256 is not pinned" in out.getvalue()
    out = io.StringIO()
    validate_recipe(load_recipe("centos7"), Reporter(out), environ={})
    assert "trusted on first use" in out.getvalue()


# -- the plan ----------------------------------------------------------------------------------------

def test_describe_centos7_plan_is_exact():
    plan = describe_vm_install(load_recipe("centos7"))
    tree = "http://vault.centos.org/7.9.2009/os/x86_64/"
    assert plan["kernel"] == {"path": "images/pxeboot/vmlinuz", "url": tree + "images/pxeboot/vmlinuz",
                              "sha256": None}
    assert plan["initrd"] == {"path": "images/pxeboot/initrd.img", "url": tree + "images/pxeboot/initrd.img",
                              "sha256": None}
    assert plan["cmdline"] == (f"inst.ks=file:/ks.cfg inst.repo={tree} inst.text inst.cmdline "
                               "console=ttyS0,115200n8")
    assert plan["answer_file"] == {"kind": "kickstart", "name": "ks.cfg", "template": "centos7.ks.j2",
                                   "syntax": "RHEL7", "injected_at": "/ks.cfg (initrd root)"}
    assert (plan["memory_mib"], plan["vcpus"], plan["inactivity_seconds"], plan["timeout_seconds"]) == \
        (2048, 2, 600, 5400)
    assert plan["completion_marker"] == COMPLETION_MARKER
    assert plan["pinned"] is False
    json.dumps(plan)  # plain data


def test_describe_debian_preseed_plan():
    plan = describe_vm_install(load_recipe("debian12-preseed"))
    assert plan["cmdline"] == "auto=true priority=critical preseed/file=/preseed.cfg console=ttyS0,115200n8"
    assert plan["kernel"]["url"].endswith(
        "/installer-amd64/current/images/netboot/debian-installer/amd64/linux")
    assert plan["initrd"]["path"] == "netboot/debian-installer/amd64/initrd.gz"
    assert plan["checksums_cross_checked_with"] == "SHA256SUMS"


def test_recipe_kernel_args_are_appended():
    plan = describe_vm_install(with_vm(load_recipe("centos7"), kernel_args=("inst.sshd=0",)))
    assert plan["kernel_args"][-1] == "inst.sshd=0"


def test_site_mirror_map_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("IMAGEBUILD_MIRRORS", "http://vault.centos.org/=http://mirror.site.example/vault/")
    recipe = load_recipe("centos7")
    assert "url --url=http://mirror.site.example/vault/7.9.2009/os/x86_64/" in render_answer_file(recipe).text
    assert describe_vm_install(recipe)["tree_url"] == "http://mirror.site.example/vault/7.9.2009/os/x86_64/"
    assert describe_vm_install(recipe, mirrors={})["tree_url"] == "http://vault.centos.org/7.9.2009/os/x86_64/"
    monkeypatch.setenv("IMAGEBUILD_MIRRORS", "nonsense")
    with pytest.raises(RecipeError, match="IMAGEBUILD_MIRRORS"):
        validate_recipe(recipe)


@pytest.mark.parametrize("name,tree", [("rocky9", "http://dl.rockylinux.org/vault/rocky/9.5/BaseOS/x86_64/os/"),
                                       ("almalinux9", "https://vault.almalinux.org/9.5/BaseOS/x86_64/os/")])
def test_el9_recipes_render_rhel9_kickstarts_and_plan(name, tree):
    recipe = load_recipe(name)
    rendered = render_answer_file(recipe, mirrors={})
    assert rendered.syntax == "RHEL9" and rendered.text.startswith("#version=RHEL9\n")
    lines = rendered.text.splitlines()
    assert "install" not in lines and not any(line.startswith("auth ") for line in lines)
    assert "authselect select minimal" in lines and f"url --url={tree}" in lines
    assert any(line.startswith("repo --name=AppStream --baseurl=") for line in lines)
    # The file lints clean on its own too, as `invoke lint` sees it (syntax guessed from #version=).
    from imagebuild.answerfile.lint import lint_bytes
    alone = lint_bytes(rendered.text.encode(), "ks.cfg")
    assert alone.syntax == "RHEL9" and alone.findings.errors == ()
    plan = describe_vm_install(recipe, mirrors={})
    assert plan["cmdline"] == (f"inst.ks=file:/ks.cfg inst.repo={tree} inst.text inst.cmdline "
                               "console=ttyS0,115200n8")
    assert plan["answer_file"]["syntax"] == "RHEL9" and plan["answer_file"]["template"] == f"{name}.ks.j2"
    assert plan["kernel"]["url"] == tree + "images/pxeboot/vmlinuz"


# -- cloud images ([cloud], docs/cloud.md) -----------------------------------------------------------

EL_CLOUD_PACKAGES = ("cloud-init", "cloud-utils-growpart", "dracut-config-generic")
CLOUD_INIT_UNITS = ("cloud-init-local", "cloud-init", "cloud-config", "cloud-final")


def packages_section(text: str) -> list[str]:
    return text.split("%packages\n", 1)[1].split("%end", 1)[0].splitlines()


def enabled_services(text: str, syntax: str) -> list[str]:
    """The services anaconda enables, as pykickstart reads the file (it keeps the last 'services' line)."""
    handler, findings = answerfile.parse_kickstart(text, syntax)
    assert findings.errors == (), findings.errors
    return list(handler.services.enabled)


def cloud_off(tmp_path: Path, parent: str) -> answerfile.RenderedAnswerFile:
    """``parent`` with ``[cloud] enabled = false``, from a recipe in tmp_path that extends it."""
    (tmp_path / f"{parent}-nocloud.toml").write_text(
        f'extends = "{parent}"\ndescription = "{parent} without cloud-init"\n[cloud]\nenabled = false\n')
    recipe = load_recipe(f"{parent}-nocloud", dirs=[tmp_path, RECIPES])
    assert not recipe.cloud.enabled
    validate_recipe(recipe)
    return render_answer_file(recipe, mirrors={})


@pytest.mark.parametrize("name,syntax", [("rocky9", "RHEL9"), ("almalinux9", "RHEL9"), ("centos7", "RHEL7")])
def test_el_cloud_images_install_and_enable_cloud_init(name, syntax):
    rendered = render_answer_file(load_recipe(name), mirrors={})
    packages = packages_section(rendered.text)
    for pkg in EL_CLOUD_PACKAGES:
        assert pkg in packages and f"-{pkg}" not in packages
    services = enabled_services(rendered.text, syntax)
    assert services == ["sshd", *CLOUD_INIT_UNITS]
    # dracut-config-generic's hostonly="no" makes the regenerated initramfs host-independent: no
    # command line (--hostonly, -H) and no configuration of ours may override it.
    commands = [ln.strip() for ln in rendered.text.splitlines() if not ln.lstrip().startswith("#")]
    assert [c for c in commands if c.startswith("dracut ")] == ["dracut -f --regenerate-all"]
    assert not [c for c in commands if "hostonly" in c]
    # Nothing undoes cloud-init, and root keeps the recipe's crypted password (or none).
    assert "cloud-init.disabled" not in rendered.text
    assert not re.search(r"^(services .*--disabled=|.*systemctl (disable|mask) cloud)", rendered.text, re.M)
    assert [ln for ln in rendered.text.splitlines() if ln.startswith("rootpw")] == \
        [f"rootpw --iscrypted {PLACEHOLDER_HASH}"]
    from imagebuild.answerfile.lint import lint_bytes
    alone = lint_bytes(rendered.text.encode(), "ks.cfg")
    assert alone.syntax == syntax and alone.findings.errors == ()


@pytest.mark.parametrize("parent,syntax", [("rocky9", "RHEL9"), ("centos7", "RHEL7")])
def test_el_image_without_cloud_has_no_cloud_init(tmp_path, parent, syntax):
    rendered = cloud_off(tmp_path, parent)
    packages = packages_section(rendered.text)
    assert "qemu-guest-agent" in packages
    assert not set(EL_CLOUD_PACKAGES) & set(packages)
    assert enabled_services(rendered.text, syntax) == ["sshd"]
    assert "services --enabled=sshd" in rendered.text.splitlines()
    assert "cloud-init" not in rendered.text and "dracut-config-generic" not in rendered.text


def test_a_child_adds_services_and_keeps_cloud_init(tmp_path):
    recipe, dirs = custom(tmp_path, '{% extends "centos7.ks.j2" %}\n'
                                    "{% block enabled_services %}sshd,httpd{% endblock %}\n")
    rendered = render_answer_file(recipe, dirs=dirs)
    assert enabled_services(rendered.text, "RHEL7") == ["sshd", "httpd", *CLOUD_INIT_UNITS]
    line = next(i for i, ln in enumerate(rendered.text.splitlines(), 1) if ln.startswith("services "))
    assert str(rendered.origin(line)) == f"kickstart/el7-base.ks.j2:{template_line('el7-base.ks.j2', '^services ')}"


def test_debian_preseed_installs_cloud_init_and_leaves_it_on(tmp_path):
    rendered = render_answer_file(load_recipe("debian12-preseed"), mirrors={})
    entries, _ = answerfile.parse_preseed(rendered.text)
    include = entries["pkgsel/include"].value.split()
    for pkg in ("cloud-init", "cloud-guest-utils", "cloud-initramfs-growroot", "sudo"):
        assert pkg in include
    assert "cloud-init.disabled" not in rendered.text
    off = cloud_off(tmp_path, "debian12-preseed")
    entries, _ = answerfile.parse_preseed(off.text)
    assert entries["pkgsel/include"].value.split() == ["net-tools", "lrzsz", "screen", "tree", "vim", "wget",
                                                       "qemu-guest-agent"]


def test_templates_see_the_cloud_settings():
    recipe = load_recipe("rocky9")
    cloud = answerfile.template_variables(recipe, root_password_hash=PLACEHOLDER_HASH, mirrors={})["cloud"]
    assert cloud == {"enabled": True, "packages": list(EL_CLOUD_PACKAGES), "default_user": "rocky",
                     "datasources": ["NoCloud", "ConfigDrive", "OpenStack", "None"],
                     "renderer": "network-manager", "growfs": True}
    json.dumps(cloud)  # plain data, nothing a sandboxed template could reach through
    with pytest.raises(RecipeError, match="set by imagebuild"):
        render_answer_file(with_vm(recipe, variables={**recipe.install.vm.variables, "cloud": "off"}))


@pytest.mark.parametrize("template,syntax", [("scripted.ks.j2", "RHEL7"), ("scripted-el9.ks.j2", "RHEL9")])
def test_the_scripted_installer_kickstarts_render_and_lint(template, syntax):
    """What the stand-in gets in the VM tests (tests/vm/test_vm_install.py): the real base templates,
    linted as a build would; the RHEL9 one has none of the commands the stand-in (like anaconda)
    refuses in a RHEL9 kickstart."""
    scripted = PROJECT_ROOT / "tests" / "data" / "scripted"
    recipe = with_vm(load_recipe("rocky9" if syntax == "RHEL9" else "centos7"), template=template,
                     kickstart_syntax=syntax,
                     variables={**load_recipe("rocky9").install.vm.variables, "payload_url": "http://10.0.2.2:8/",
                                "pre_script": "", "appstream_url": "http://10.0.2.2:8/",
                                "updates_url": "http://10.0.2.2:8/"})
    rendered = render_answer_file(recipe, dirs=[scripted, TEMPLATE_DIR], mirrors={})
    assert rendered.text.startswith(f"#version={syntax}\n")
    check_answer_file(rendered, required_packages=recipe.packages.all)
    lines = rendered.text.splitlines()
    assert "url --url=http://10.0.2.2:8/" in lines
    if syntax == "RHEL9":
        assert not [ln for ln in lines if re.match(r"^(install\s*$|auth |authconfig )", ln)]
