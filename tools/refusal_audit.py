"""Remove one refusal at a time and check that its guarding tests fail (a mutation audit).

Every place that refuses, verifies or degrades should have a test that breaks
when it stops doing so. Each :class:`Mutant` below names one such check, the
exact source text that implements it, a replacement that disables it, and the
tests that guard it. For each selected mutant this tool writes the replacement
into the working tree, runs only those tests, and restores the file (also on
Ctrl-C). A mutant is *killed* when the tests fail, *survived* when they pass
(a gap: that check has no guard), *skipped* when every test skipped here (say,
no root or no CRIU: the guard exists but could not be run on this machine).

    python tools/refusal_audit.py                  # all mutants
    python tools/refusal_audit.py bundle.size reg.blob-digest
    python tools/refusal_audit.py --list           # names and checks, run nothing
    python tools/refusal_audit.py --baseline ...   # also run the tests unmutated first

docs/testing.md holds the table of checks, their guards and the last result.
Run from the repository root with the project's environment (PYTHONPATH=src).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Per mutant: the guarding tests of the slowest checks (a real registry or CRIU
# on a loaded 2-core machine) take a minute or two; a hang is a survivor too.
TEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # repository-relative
    old: str  # must occur exactly once in ``file``
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail with ``new`` in place
    check: str  # what the original code refuses, in words


def _m(name: str, file: str, old: str, new: str, check: str, *tests: str) -> Mutant:
    return Mutant(name, file, old, new, tuple(tests), check)


M = "src/zerostart/"
TB = "tests/unit/test_bundle.py::"
TR = "tests/integration/test_registry.py::"
TP = "tests/unit/test_registry_protocol.py::"
TRL = "tests/integration/test_registry_layout_refusals.py::"
TC = "tests/unit/test_container_refusals.py::"

MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- model/
    _m(
        "bundle.size",
        M + "bundle/folder.py",
        "        if size != entry.size:\n",
        "        if False:\n",
        "a bundle file whose size differs from the manifest",
        TB + "test_weights_size_change_fails_fast",
    ),
    _m(
        "bundle.small-file-sha256",
        M + "bundle/folder.py",
        "                _compare(file, _sha256_file(file), entry.sha256)\n",
        "                pass\n",
        "verify=fast: a same-size edit of the vocabulary (sha256)",
        TB + "test_vocab_edit_fails_fast",
    ),
    _m(
        "bundle.header-sha256",
        M + "bundle/folder.py",
        "file, hashlib.sha256(head).hexdigest(), entry.header_sha256, what=",
        "file, entry.header_sha256, entry.header_sha256, what=",
        "verify=fast: a same-size edit of the weights' safetensors header",
        TB + "test_weights_header_edit_fails_fast",
    ),
    _m(
        "bundle.no-header-digest",
        M + "bundle/folder.py",
        "                if not entry.header_sha256:\n",
        "                if False:\n",
        "verify=fast: a manifest without the weights header digest",
        TB + "test_manifest_without_a_header_digest_is_refused_by_fast",
    ),
    _m(
        "bundle.full-sha256",
        M + "bundle/folder.py",
        "            _compare(self.path / name, digest, entry.sha256)\n",
        "            pass\n",
        "verify=full: one flipped bit in the tensor data",
        TB + "test_flipped_weight_bit_fails_full_but_not_fast",
    ),
    _m(
        "bundle.layout-version",
        M + "bundle/folder.py",
        "        if layout != LAYOUT_VERSION:\n",
        "        if False:\n",
        "weights in another engine layout version",
        TB + "test_weights_in_another_layout_version_are_refused",
    ),
    _m(
        "manifest.format-version",
        M + "bundle/manifest.py",
        "            if version != FORMAT_VERSION:\n",
        "            if False:\n",
        "a bundle manifest of another format version",
        "tests/unit/test_model_refusals.py::test_manifest_of_another_format_version_is_refused",
    ),
    _m(
        "weights.overlap",
        M + "bundle/weights.py",
        "        if begin < reach and end > begin:\n",
        "        if False:\n",
        "safetensors tensors whose byte ranges overlap",
        "tests/unit/test_weights.py::test_header_inconsistencies_are_refused",
    ),
    _m(
        "torchbin.globals",
        M + "model/torchbin.py",
        "            return _ALLOWED[(module, name)]\n        except KeyError:\n",
        '            return _ALLOWED[(module, name)]\n        except KeyError:\n            return __import__("importlib").import_module(module).__dict__[name]\n',
        "a pytorch_model.bin pickle naming a global outside the allow-list (code execution)",
        "tests/unit/test_convert.py::test_bin_with_a_disallowed_global_is_refused_without_running_it",
    ),
    # ---------------------------------------------------------------- registry/
    _m(
        "reg.blob-digest",
        M + "registry/_distribution.py",
        "        if got != self.digest:\n",
        "        if False:\n",
        "a pulled blob whose sha256 differs from its descriptor",
        TP + "test_verifier_refuses_changed_short_and_long_content",
        TR + "test_tampered_blob_is_refused_and_never_written",
    ),
    _m(
        "reg.blob-too-long",
        M + "registry/_distribution.py",
        "        if self.seen > self.size:\n",
        "        if False:\n",
        "a pulled blob longer than its descriptor (refused at the first extra byte)",
        TP + "test_verifier_refuses_changed_short_and_long_content",
    ),
    _m(
        "reg.blob-too-short",
        M + "registry/_distribution.py",
        "        if self.seen != self.size:\n",
        "        if False:\n",
        "a pulled blob shorter than its descriptor",
        TP + "test_verifier_refuses_changed_short_and_long_content",
    ),
    _m(
        "reg.pull-tmp-then-rename",
        M + "registry/client.py",
        "            with contextlib.suppress(FileNotFoundError):\n                os.unlink(tmp)\n"
        "        self.downloaded += 1",
        "            with contextlib.suppress(FileNotFoundError):\n                os.replace(tmp, dest)\n"
        "        self.downloaded += 1",
        "pull: a refused or interrupted blob never reaches its final name",
        TR + "test_tampered_blob_is_refused_and_never_written",
        TR + "test_interrupted_pull_leaves_no_partial_blob",
    ),
    _m(
        "reg.present-blob-verified",
        M + "registry/layout.py",
        "        try:\n            verifier.check()\n        except d.ProtocolError:\n            return False\n",
        "        pass\n",
        "pull: a damaged blob already in the layout is fetched again, not trusted",
        TRL + "test_a_damaged_local_blob_is_fetched_again",
    ),
    _m(
        "reg.push-reads-verified",
        M + "registry/layout.py",
        "        if sha256_digest(data) != digest:\n",
        "        if False:\n",
        "push: a manifest in the layout that does not match its digest",
        TRL + "test_push_refuses_a_layout_manifest_that_does_not_match_its_digest",
    ),
    _m(
        "reg.push-blob-size",
        M + "registry/layout.py",
        "        if actual != size:\n",
        "        if False:\n",
        "push: a layer blob in the layout whose size differs from its descriptor",
        TRL + "test_push_refuses_a_truncated_layer_blob",
    ),
    _m(
        "reg.digest-syntax",
        M + "oci/_media.py",
        '_SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")',
        '_SHA256_DIGEST = re.compile(r"sha256:.+")',
        "a descriptor digest that is not sha256:<64 hex> (path escape into the layout)",
        TRL + "test_a_digest_with_a_path_in_it_is_refused",
    ),
    _m(
        "reg.resume-offset",
        M + "registry/_distribution.py",
        "        self.offset = parse_range_end(range_header)\n",
        "        self.offset = self.offset\n",
        "resumed upload restarts from the registry's byte count, not ours",
        TP + "test_resume_rewinds_to_the_registrys_byte_count",
        TR + "test_connection_cut_mid_chunk_is_recovered_within_the_push",
    ),
    _m(
        "reg.upload-stored-digest",
        M + "registry/_distribution.py",
        "        if returned_digest and returned_digest != self.digest:\n",
        "        if False:\n",
        "push: the registry stored the blob under another digest",
        TP + "test_upload_refuses_out_of_order_steps_and_bad_answers",
    ),
    _m(
        "reg.auth-wrong-password",
        M + "registry/_http.py",
        "        if ans.status in (401, 403):\n            who =",
        "        if False:\n            who =",
        "credentials refused after the auth flow: RegistryAuthError naming the user",
        TR + "test_auth_failures_are_clear",
    ),
    _m(
        "reg.auth-token-refused",
        M + "registry/_http.py",
        "        if tok.status != 200:\n",
        "        if False:\n",
        "a token service refusing the credentials: RegistryAuthError naming the service",
        "tests/unit/test_registry_driver.py::test_bearer_flow_with_wrong_password_names_the_token_service",
    ),
    _m(
        "reg.short-upload-body",
        M + "registry/_http.py",
        "        if len(data) < n:\n",
        "        if False:\n",
        "a blob file shorter than the Content-Length being sent fails at once, not after timeouts",
        "tests/unit/test_registry_driver.py::test_a_blob_file_shorter_than_its_upload_fails_at_once",
    ),
    # ---------------------------------------------------------------- snapshot/
    _m(
        "snap.kernel",
        M + "snapshot/_compat.py",
        "    if recorded.kernel != here.kernel:\n",
        "    if False:\n",
        "restore on another kernel release",
        "tests/unit/test_snapshot_logic.py::test_missing_cpu_flag_kernel_and_criu_are_named",
    ),
    _m(
        "snap.cpu-flags",
        M + "snapshot/_compat.py",
        "    missing = sorted(set(recorded.cpu_flags) - set(here.cpu_flags))\n",
        "    missing: list[str] = []\n",
        "restore on a CPU without a recorded flag (SIGILL later)",
        "tests/unit/test_snapshot_logic.py::test_missing_cpu_flag_kernel_and_criu_are_named",
    ),
    _m(
        "snap.criu-version",
        M + "snapshot/_compat.py",
        "    if not rec_v or not here_v or rec_v[0] != here_v[0] or here_v < rec_v:\n",
        "    if False:\n",
        "restore with an older or other-major CRIU",
        "tests/unit/test_snapshot_logic.py::test_criu_version_rule",
    ),
    _m(
        "snap.cuda-driver",
        M + "snapshot/_compat.py",
        "        if recorded.cuda_driver != here.cuda_driver:\n",
        "        if False:\n",
        "restore of a CUDA snapshot under another driver version",
        "tests/unit/test_snapshot_logic.py::test_cuda_snapshot_needs_same_driver",
    ),
    _m(
        "snap.gpus",
        M + "snapshot/_compat.py",
        "        if tuple(recorded.gpus) != tuple(here.gpus[: len(recorded.gpus)]):\n",
        "        if False:\n",
        "restore of a CUDA snapshot on other GPU models",
        "tests/unit/test_snapshot_logic.py::test_cuda_snapshot_needs_same_driver",
    ),
    _m(
        "snap.mapped-files",
        M + "snapshot/_compat.py",
        "        if why is not None:\n",
        "        if False:\n",
        "restore while a mapped library/file changed underneath",
        "tests/integration/test_snapshot.py::test_changed_mapped_file_is_refused",
    ),
    _m(
        "snap.image-sha256",
        M + "snapshot/_store.py",
        "        if sha256_file(path) != rec.sha256:\n",
        "        if False:\n",
        "a snapshot image file with other bytes than recorded",
        "tests/unit/test_snapshot_logic.py::test_verify_images_catches_flipped_byte_missing_and_extra",
    ),
    _m(
        "snap.dedup-damaged-blob",
        M + "snapshot/_store.py",
        "        elif blob.exists() and sha256_file(blob) != digest:\n",
        "        elif False:\n",
        "dedup never links a new snapshot to a damaged stored blob",
        "tests/unit/test_snapshot_logic.py::test_a_damaged_blob_is_replaced_not_linked_into_new_snapshots",
    ),
    _m(
        "snap.name",
        M + "snapshot/_store.py",
        '    if not name or name.startswith(".") or not set(name) <= _NAME_OK:\n',
        "    if not name or not set(name) <= _NAME_OK:\n",
        "a snapshot name that walks out of the store ('..')",
        "tests/unit/test_snapshot_logic.py::test_bad_snapshot_names_are_refused",
    ),
    _m(
        "snap.manifest-seal",
        M + "snapshot/_manifest.py",
        "    if seal != hashlib.sha256(_canonical(data)).hexdigest():\n",
        "    if False:\n",
        "a hand-edited snapshot manifest",
        "tests/unit/test_snapshot_logic.py::test_edited_manifest_is_refused_and_resealed_one_is_read",
    ),
    _m(
        "snap.port-in-use",
        M + "snapshot/_api.py",
        "    if manifest.port is not None and _port_in_use(manifest.port):\n",
        "    if False:\n",
        "a second restore of a snapshot whose port is taken (neither restored nor booted)",
        "tests/integration/test_snapshot.py::test_second_concurrent_restore_is_refused_with_port_in_use",
    ),
    _m(
        "snap.no-fallback",
        M + "snapshot/_api.py",
        "        if not fallback:\n            raise\n",
        "        pass\n",
        "restore(fallback=False) raises instead of booting",
        "tests/integration/test_snapshot.py::test_flipped_byte_in_pages_is_refused_then_booted",
    ),
    _m(
        "snap.fallback-reason",
        M + "snapshot/_api.py",
        '        reason = f"{type(exc).__name__}: {exc}"\n',
        '        reason = "restore failed"\n',
        "a fallback boot reports why the restore was refused",
        "tests/integration/test_snapshot.py::test_flipped_byte_in_pages_is_refused_then_booted",
    ),
    # ---------------------------------------------------------------- container/ + image/
    _m(
        "cont.layer-path-escape",
        M + "container/runtime.py",
        "        raise error from exc\n",
        "        parent = os.path.join(root, os.path.dirname(rel))\n",
        "a layer member or whiteout that points outside the rootfs",
        TC + "test_members_outside_the_rootfs_are_refused_and_touch_nothing",
        TC + "test_a_whiteout_through_a_symlink_that_now_leaves_the_rootfs_is_refused",
        TC + "test_a_whiteout_through_a_link_to_a_sibling_prefix_folder_is_refused",
    ),
    # ---------------------------------------------------------------- paths.py (containment)
    _m(
        "paths.sibling-prefix",
        M + "paths.py",
        "    return path == root or path.startswith(root + os.sep)\n",
        "    return path == root or path.startswith(root)\n",
        "a resolved path in a sibling folder whose name starts with the root's (/x/rootfs-host)",
        "tests/unit/test_paths.py::test_is_within_needs_the_separator",
        TC + "test_a_whiteout_through_a_link_to_a_sibling_prefix_folder_is_refused",
        TC + "test_a_file_through_a_link_to_a_sibling_prefix_folder_is_refused",
    ),
    _m(
        "paths.dotdot",
        M + "paths.py",
        '    if ".." in parts:\n',
        "    if False:\n",
        "a name from a document with a '..' component (checked before anything is joined)",
        "tests/unit/test_paths.py::test_names_that_leave_or_are_absolute_are_refused",
        TB + "test_manifest_file_names_that_leave_the_bundle_are_refused",
    ),
    _m(
        "paths.absolute",
        M + "paths.py",
        '    if name.startswith("/") and absolute != "strip":\n',
        "    if False:\n",
        "an absolute name in a bundle manifest (names are relative to the bundle)",
        "tests/unit/test_paths.py::test_names_that_leave_or_are_absolute_are_refused",
        TB + "test_manifest_file_names_that_leave_the_bundle_are_refused",
    ),
    _m(
        "paths.resolved-outside",
        M + "paths.py",
        "    if not is_within(base, resolved):\n",
        "    if False:\n",
        "a name that resolves out of its root through a symlink already on disk",
        "tests/unit/test_paths.py::test_a_symlink_out_of_the_root_is_refused",
        TC + "test_a_whiteout_through_a_symlink_that_now_leaves_the_rootfs_is_refused",
    ),
    _m(
        "manifest.file-name",
        M + "bundle/manifest.py",
        '        raise BundleError(path, f"{what} leaves the bundle: {exc.problem}") from exc\n',
        "        clean = name\n",
        "a bundle manifest `files` entry that leaves the bundle (../../etc/passwd: stat'ed, hashed)",
        TB + "test_manifest_file_names_that_leave_the_bundle_are_refused",
    ),
    _m(
        "gateway.502-redact",
        M + "platform/_core.py",
        '        f"{redact_paths(str(exc))} (could not start a replica)",\n',
        '        f"{exc} (could not start a replica)",\n',
        "a 502 body that would show the server's absolute paths (kept in the log)",
        "tests/integration/test_platform.py::"
        "test_corrupt_bundle_gets_a_clear_5xx_and_other_models_keep_serving",
    ),
    _m(
        "serve.500-redact",
        M + "serve/app.py",
        'error_response(500, redact_paths(f"internal error: {exc!r}"), "Backend")',
        'error_response(500, f"internal error: {exc!r}", "Backend")',
        "a worker's 500 body naming a server path (kept in the log)",
        "tests/unit/test_serve_refusals.py::test_a_5xx_body_shows_no_server_path_and_the_log_keeps_it",
    ),
    _m(
        "up.check-sources",
        M + "platform/sources.py",
        "    if problem is not None:\n        return SourceCheck(model.name, key, False, problem, hint)\n",
        "    if False:\n        pass\n",
        "up / up --check with a bundle that does not exist or is a symlink loop",
        "tests/integration/test_platform.py::"
        "test_up_checks_every_model_source_at_check_and_at_start",
    ),
    _m(
        "up.start-requires-sources",
        M + "cli/platform.py",
        "    require_sources(config)  # a missing",
        "    pass  # require_sources(config)  # a missing",
        "`zerostart up` starting with a model whose source fails the check",
        "tests/integration/test_platform.py::"
        "test_up_checks_every_model_source_at_check_and_at_start",
    ),
    _m(
        "cli.sigint-restore",
        M + "cli/main.py",
        "    restore_signal_dispositions()\n    argv = ",
        "    argv = ",
        "a CLI that inherited SIGINT as ignored (background job) still stops on SIGINT",
        "tests/unit/test_cli.py::test_sigint_stops_a_command_even_when_inherited_as_ignored",
    ),
    _m(
        "image.hashlib-fallbacks",
        M + "image/closure.py",
        "    return (*HASHLIB_BUILTINS[:2], *sha2, *HASHLIB_BUILTINS[2:])\n",
        "    return sha2[:1]\n",
        "an image without OpenSSL keeps every hashlib fallback (no logged tracebacks)",
        "tests/unit/test_image_closure.py::test_hashlib_imports_cleanly_with_only_the_included_fallbacks",
        "tests/integration/test_image_build.py::"
        "test_image_runs_in_an_oci_runtime_and_answers_like_the_pipeline",
    ),
    _m(
        "estargz.name-escape",
        M + "estargz/_reader.py",
        '        raise EStargzError(name, f"name {exc.problem} (would escape the layer root)") from exc\n',
        "        pass\n",
        "an eStargz TOC entry named with '..' or NUL",
        "tests/unit/test_estargz.py::test_hostile_toc_entries_are_rejected_naming_the_entry",
    ),
    _m(
        "cont.entrypoint",
        M + "container/runtime.py",
        '        if not (image.config.get("config", {}).get("Entrypoint") or []):\n',
        "        if False:\n",
        "an image without an Entrypoint",
        TC + "test_an_image_without_entrypoint_is_refused_before_anything_runs",
    ),
    _m(
        "cont.readonly-root",
        M + "container/runtime.py",
        '        "root": {"path": rootfs, "readonly": True},\n',
        '        "root": {"path": rootfs, "readonly": False},\n',
        "the container's root filesystem is read-only",
        "tests/unit/test_image_oci.py::test_runtime_config_policy",
    ),
    _m(
        "image.blob-digest",
        M + "oci/_layout.py",
        "    if sha256_digest(data) != digest:\n",
        "    if False:\n",
        "reading an OCI layout whose manifest/config blob does not match its digest",
        "tests/unit/test_image_oci.py::test_tampered_blob_is_refused",
    ),
    _m(
        "image.layer-size",
        M + "oci/_layout.py",
        "        if not os.path.exists(la.path) or os.path.getsize(la.path) != la.size:\n",
        "        if not os.path.exists(la.path):\n",
        "reading an OCI layout whose layer blob has the wrong size",
        TC + "test_a_layer_blob_of_the_wrong_size_is_refused",
    ),
    # ---------------------------------------------------------------- serve/ + api/ + engine/
    _m(
        "serve.body-limit-length",
        M + "serve/_h1core.py",
        "        if length is not None and int(length) > self.limits.max_body_bytes:\n",
        "        if False:\n",
        "a Content-Length over max_body_bytes is 413 before the body is read",
        "tests/unit/test_serve_http.py::test_oversized_body_is_refused_before_it_is_sent",
    ),
    _m(
        "serve.body-limit-chunked",
        M + "serve/_h1core.py",
        "        if len(self._body) + len(body) > self.limits.max_body_bytes:\n",
        "        if False:\n",
        "a chunked body growing over max_body_bytes is 413",
        "tests/unit/test_serve_http.py::test_chunked_request_body",
    ),
    _m(
        "serve.head-limit",
        M + "serve/_h1core.py",
        "        if self._counted > (head := self.limits.max_head_bytes) and self.state is Read.HEAD:\n",
        "        if False:\n",
        "request headers over max_header_bytes are 431",
        "tests/unit/test_serve_http.py::test_oversized_head_is_refused_with_431",
    ),
    _m(
        "serve.queue-full",
        M + "serve/batcher.py",
        "            if len(self._queue) >= self._max_queue:\n",
        "            if False:\n",
        "a full queue answers 429 rather than growing latency without bound",
        "tests/unit/test_serve_http.py::test_queue_full_is_429_and_drains",
    ),
    _m(
        "api.client-batch",
        M + "api/_parse.py",
        "    if n > max_batch:\n",
        "    if False:\n",
        "more inputs in one request than max_client_batch_size",
        "tests/unit/test_pipeline.py::test_bad_input_gets_a_clear_error",
    ),
    _m(
        "engine.ids-range",
        M + "engine/inputs.py",
        "    if ids.min() < 0 or ids.max() >= c.vocab_size:\n",
        "    if False:\n",
        "token ids outside the vocabulary (numpy would wrap a negative id silently)",
        "tests/unit/test_engine.py::test_engine_refuses_bad_inputs",
    ),
    _m(
        "engine.seq-len",
        M + "engine/inputs.py",
        "    if ids.shape[1] > max_len:\n",
        "    if False:\n",
        "a sequence longer than the model's positions",
        "tests/unit/test_engine.py::test_engine_refuses_bad_inputs",
    ),
    _m(
        "cont.layer-dot-entry",
        M + "container/runtime.py",
        '    if base in ("", ".", ".."):\n',
        "    if False:\n",
        "a whiteout of '.' or '..' (the folder itself, or its parent)",
        TC + "test_members_outside_the_rootfs_are_refused_and_touch_nothing",
    ),
    _m(
        "reg.content-length",
        M + "registry/_http.py",
        "                if announced is not None and int(announced) != size:\n",
        "                if False:\n",
        "pull: a blob the registry announces at another size is refused before it is read",
        TR + "test_tampered_blob_is_refused_and_never_written",
    ),
    _m(
        "cuda.check",
        M + "engine/cuda/driver.py",
        "    def check(self, call: str, status: int) -> None:\n        if status != CUDA_SUCCESS:\n",
        "    def check(self, call: str, status: int) -> None:\n        if False:\n",
        "a CUDA driver status other than success becomes CudaError with the driver's text",
        "tests/unit/test_cuda_driver.py::test_status_becomes_typed_error_with_driver_text",
    ),
    _m(
        "cuda.ptx-arch",
        M + "engine/cuda/module.py",
        "    if PTX_KEY in variant.images and cc >= ptx_cc:\n",
        "    if PTX_KEY in variant.images:\n",
        "PTX is loaded only on a GPU at least as new as the PTX's arch; else a clear error",
        "tests/unit/test_cuda_launch.py::test_image_choice_exact_cubin_then_ptx_then_clear_error",
    ),
    _m(
        "image.file-and-dir",
        M + "image/layers.py",
        '            elif by_path[parent].kind != "dir":\n',
        "            elif False:\n",
        "one layer path that is both a file and a directory",
        "tests/unit/test_image_layers.py::test_a_file_cannot_be_a_directory",
    ),
    _m(
        "convert.overwrite",
        M + "model/convert.py",
        "    if dst.is_dir() and any(dst.iterdir()) and not (dst / MANIFEST_NAME).is_file():\n",
        "    if False:\n",
        "convert never overwrites a non-empty folder that is not a bundle (a user's files)",
        "tests/unit/test_convert.py::test_refuses_to_overwrite_a_folder_that_is_not_a_bundle",
    ),
    _m(
        "serve.max-connections",
        M + "serve/http.py",
        "        if len(host.connections) > self._limits.max_connections:\n",
        "        if False:\n",
        "connections over max_connections are answered 503 and closed",
        "tests/unit/test_serve_http.py::test_too_many_connections_are_refused",
    ),
    _m(
        "serve.header-timeout",
        M + "serve/http.py",
        '            self._arm("first", self._limits.head_timeout_s)\n',
        "            pass\n",
        "a connection that never sends a byte is closed after header_timeout_s",
        "tests/unit/test_serve_http.py::test_silent_connection_and_idle_keep_alive_are_closed",
    ),
    _m(
        "tokenize.overlong-word",
        M + "tokenize/_wordpiece.py",
        "        if n > self._max_chars:\n",
        "        if False:\n",
        "a word over max_input_chars_per_word is one [UNK], not a quadratic WordPiece search",
        "tests/unit/test_tokenizer.py::test_a_word_over_max_input_chars_is_unk_even_when_its_pieces_exist",
    ),
    _m(
        "api.token-id-negative",
        M + "tokenize/_tokenizer.py",
        "        if not 0 <= i < self.vocab_size:\n",
        "        if not i < self.vocab_size:\n",
        "a negative token id sent as input (would index the vocabulary from its end)",
        "tests/unit/test_api_refusals.py::test_token_ids_outside_the_vocabulary_are_refused",
    ),
    _m(
        "api.token-id-too-big",
        M + "tokenize/_tokenizer.py",
        "        if not 0 <= i < self.vocab_size:\n",
        "        if not 0 <= i:\n",
        "a token id past the vocabulary sent as input",
        "tests/unit/test_api_refusals.py::test_token_ids_outside_the_vocabulary_are_refused",
    ),
    # ------------------------------------------------- drain, liveness, pool folders (issue 17)
    _m(
        "serve.drain-backlog",
        M + "serve/http.py",
        "            self._adopt_backlog()\n",
        "",
        "connections in the accept queue at shutdown are answered, not reset",
        "tests/unit/test_serve_drain.py::test_connections_in_the_backlog_at_shutdown_get_503_not_a_reset",
    ),
    _m(
        "serve.drain-late-request",
        M + "serve/http.py",
        "                if self._host.draining:\n                    # Arrived after shutdown began",
        "                if False:\n                    # Arrived after shutdown began",
        "a request completing after shutdown began is refused with 503 + connection: close",
        "tests/unit/test_serve_drain.py::test_a_silent_connection_at_shutdown_gets_an_answer_to_its_late_request",
    ),
    # ------------------------------------------------------ the HTTP layer (issue 17, section 1)
    _m(
        "http.trailer-merge",
        M + "serve/_h1core.py",
        "            self._count(len(name) + len(value) + 4)\n            return\n",
        "            self._count(len(name) + len(value) + 4)\n"
        "            self._headers[name.decode().lower()] = value.decode()\n            return\n",
        "trailer fields never reach the request's head (RFC 9110 section 6.5.1)",
        "tests/unit/test_h1_core.py::test_trailer_fields_never_reach_the_head",
        "tests/integration/test_http_auth.py::test_gateway_trailer_cannot_reroute_or_authorize",
    ),
    _m(
        "http.stalled-bytes-bound",
        M + "serve/_h1core.py",
        "            if budget is not None and not self._calls:",
        "            if False:",
        "an endless trailer field (or header value) is cut off at its limit: 431",
        "tests/unit/test_h1_core.py::test_one_endless_trailer_field_is_cut_off_at_the_limit",
    ),
    _m(
        "http.singleton-fields",
        M + "serve/_h1core.py",
        "        elif key in SINGLETON_FIELDS:",
        "        elif False:",
        "two Host / Authorization / Content-Type fields: 400",
        "tests/unit/test_h1_core.py::test_ambiguous_or_missing_host_and_keys_get_400",
    ),
    _m(
        "http.host-required",
        M + "serve/_h1core.py",
        '        if host is None and self._parser.get_http_version() == "1.1":',
        "        if False:",
        "an HTTP/1.1 request without Host: 400 (RFC 9112 section 3.2)",
        "tests/unit/test_h1_core.py::test_ambiguous_or_missing_host_and_keys_get_400",
    ),
    _m(
        "http.dot-segments",
        M + "serve/_h1core.py",
        "        path = remove_dot_segments(path)",
        "        path = path",
        "the path is canonical before auth and routing (/models/a/../b is b's)",
        "tests/unit/test_h1_core.py::test_targets_are_made_canonical",
    ),
    _m(
        "http.body-deadline",
        M + "serve/_h1core.py",
        "            whole = self._body_start + self.limits.body_deadline_s",
        '            whole = float("inf")',
        "a steadily trickling body is cut off at body_deadline_s: 408",
        "tests/unit/test_h1_core.py::test_a_steady_trickle_of_body_still_meets_the_whole_body_deadline",
    ),
    _m(
        "http.per-client-cap",
        M + "serve/http.py",
        "        elif host.clients[self._client] > self._limits.max_connections_per_client:",
        "        elif False:",
        "one client address holds at most max_connections_per_client connections: 503",
        "tests/integration/test_http_limits.py::test_one_client_cannot_take_every_connection",
    ),
    _m(
        "worker.key-on-post-root",
        M + "serve/app.py",
        '            and route not in ("health", "ping")\n',
        '            and route not in ("health", "ping")\n'
        '            and not (route == "" and method == "POST")\n',
        "the worker's key is needed on POST / as on every route but the probes",
        "tests/integration/test_http_auth.py::test_worker_route_needs_the_key_in_its_head",
    ),
    _m(
        "gateway.host-case",
        M + "platform/gateway.py",
        '.partition(":")[0].lower().partition(".")',
        '.partition(":")[0].partition(".")',
        "Host: B.x routes to model b (host names are case-insensitive)",
        "tests/integration/test_http_auth.py::test_gateway_odd_paths_and_hosts",
    ),
    _m(
        "pool.reap-live-folder",
        M + "platform/_rundir.py",
        "        except BlockingIOError:\n            return False  # its pool is alive\n",
        "        except BlockingIOError:\n            pass\n",
        "a starting pool never removes a live pool's folder (its lock is held)",
        "tests/unit/test_liveness_core.py::test_only_dead_owners_folders_are_reaped",
    ),
    _m(
        "platform.stopped-is-hung",
        M + "platform/liveness.py",
        '        return health, "hung" if now - since >= policy.stopped_s else "ok"\n',
        '        return health, "ok"\n',
        "a replica or slot stopped (SIGSTOP) for stopped_s is hung",
        "tests/unit/test_liveness_core.py::test_a_stopped_process_is_hung_only_after_stopped_s",
    ),
    _m(
        "slot.fault-kind",
        M + "faults.py",
        '            return "model" if exc.status in _CUDA_MODEL_STATUSES else "slot"\n',
        '            return "model"\n',
        "a CUDA out-of-memory in one slot is that slot's fault (the start falls through), not the model's",
        "tests/unit/test_faults.py",
    ),
    _m(
        "slot.fault-sent",
        M + "serve/slot.py",
        '        "fault": fault_of(exc),\n',
        "",
        "a slot sends whose fault a failed assignment is; a bad bundle fails the start at once",
        "tests/integration/test_platform_pool.py::"
        "test_a_bad_bundle_through_a_slot_names_the_problem",
    ),
    _m(
        "gateway.failed-seat-out-first",
        M + "platform/_core.py",
        "        if failure in policy.takes_out:\n"
        "            actions += self.seat_failed(rt, seat, why, failure, now)\n"
        "        actions += self.release(rt, seat, now)\n",
        "        actions += self.release(rt, seat, now)\n"
        "        if failure in policy.takes_out:\n"
        "            actions += self.seat_failed(rt, seat, why, failure, now)\n",
        "a seat whose connection just failed is never handed to a queued request",
        "tests/unit/test_gateway_core.py::"
        "test_a_replica_that_dies_mid_request_is_replaced_and_the_request_re_sent_once",
    ),
)


def _run_tests(tests: tuple[str, ...], timeout_s: float) -> tuple[str, str]:
    """``(outcome, summary)``; outcome is "failed", "passed", "skipped" or "error"."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rs", *tests]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "failed", f"timed out after {timeout_s:.0f}s"
    tail = [ln for ln in done.stdout.splitlines() if ln.strip()][-1:] or [done.stderr[-300:]]
    summary = tail[0]
    if done.returncode == 1:
        return "failed", summary
    if done.returncode == 0:
        if " passed" not in summary and "skipped" in summary:
            return "skipped", summary
        return "passed", summary
    return "error", summary + "\n" + done.stdout[-2000:] + done.stderr[-2000:]


def run_mutant(m: Mutant, timeout_s: float) -> tuple[str, str]:
    path = REPO / m.file
    original = path.read_text()
    if original.count(m.old) != 1:
        return "stale", f"{m.file}: the mutated text occurs {original.count(m.old)} times, not once"
    try:
        path.write_text(original.replace(m.old, m.new))
        outcome, summary = _run_tests(m.tests, timeout_s)
    finally:
        path.write_text(original)
    verdict = {"failed": "killed", "passed": "survived"}.get(outcome, outcome)
    return verdict, summary


def _table(mutants: list[Mutant], results: Path) -> str:
    """Markdown rows: check, file:function, guarding tests, verdict of the last run."""
    verdicts = {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        verdicts[row["name"]] = row["verdict"]
    rows = [
        "| mutant | check | file: function | guarded by | removed → tests fail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in mutants:
        tests = "<br>".join(f"`{t.split('/')[-1]}`" for t in m.tests)
        verdict = {"killed": "yes", "survived": "**no**"}.get(verdicts.get(m.name, ""), "not run")
        if m.name in verdicts and verdicts[m.name] not in ("killed", "survived"):
            verdict = verdicts[m.name]
        rows.append(
            f"| `{m.name}` | {m.check} | `{m.file.removeprefix('src/zerostart/')}`: "
            f"`{_function_of(m)}` | {tests} | {verdict} |"
        )
    return "\n".join(rows)


def _function_of(m: Mutant) -> str:
    """The name of the def (or class body) that holds the mutated text."""
    text = (REPO / m.file).read_text()
    before = text[: text.find(m.old)] if m.old in text else ""
    name = "?"
    for line in before.splitlines():
        stripped = line.lstrip()
        for kw in ("def ", "class "):
            if stripped.startswith(kw):
                name = stripped[len(kw) :].split("(")[0].split(":")[0]
        if line.startswith(("_", "A", "B", "C", "D", "E", "F", "G", "H")) and " = " in line:
            name = line.split(" = ")[0].split(":")[0]
    return name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--baseline", action="store_true", help="run each mutant's tests unmutated")
    ap.add_argument("--json", type=Path, help="append one JSON line per result to this file")
    ap.add_argument("--timeout", type=float, default=TEST_TIMEOUT_S)
    ap.add_argument(
        "--table",
        type=Path,
        metavar="JSONL",
        help="print docs/testing.md's table from --json results",
    )
    args = ap.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        ap.error(f"unknown mutants: {', '.join(unknown)}")
    chosen = [by_name[n] for n in args.names] if args.names else list(MUTANTS)
    if args.table:
        print(_table(chosen, args.table))
        return 0
    if args.list:
        for m in chosen:
            print(f"{m.name:28} {m.file}: {m.check}")
        return 0
    bad = 0
    for m in chosen:
        t0 = time.perf_counter()
        if args.baseline:
            outcome, summary = _run_tests(m.tests, args.timeout)
            if outcome != "passed":
                print(f"{m.name:28} BASELINE {outcome}: {summary}", flush=True)
                bad += 1
                continue
        verdict, summary = run_mutant(m, args.timeout)
        dt = time.perf_counter() - t0
        print(f"{m.name:28} {verdict:9} {dt:6.1f}s  {summary}", flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps({"name": m.name, "verdict": verdict, "summary": summary}) + "\n")
        bad += verdict != "killed"
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
