"""The project's own copies of the spec's curl example agree: ``examples/curl`` holds the code blocks of
``docs/custom-providers.md`` verbatim, so the integration tests that run ``examples/curl`` run the spec."""
from __future__ import annotations

import pytest

from tests.spec import EXAMPLE, curl_example, spec_curl_example


@pytest.mark.parametrize("path", sorted(spec_curl_example()))
def test_example_file_is_the_spec_block_verbatim(path: str) -> None:
    assert curl_example().get(path) == spec_curl_example()[path], f"{EXAMPLE / path} differs from the spec"


def test_example_has_only_the_spec_files_and_the_requirements_it_names() -> None:
    named = "src/dstack/providers/requirements.txt"  # in providers.yaml's commands; the spec does not show it
    assert named in spec_curl_example()[".dstack/providers.yaml"]
    assert set(curl_example()) == set(spec_curl_example()) | {named}
