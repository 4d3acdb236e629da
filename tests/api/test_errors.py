"""Every error class answers with an OperationOutcome and the right status, and stores
nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from server.fhir.service import WriteContext

from .conftest import FHIR_JSON, FNR_SYSTEM, MAX_BODY, Fhir, patient, refused


def _assert_outcome(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and all(i["diagnostics"] for i in body["issue"])
    return body


@pytest.fixture
def nothing_stored(fhir: Fhir) -> Iterator[None]:
    before = fhir.versions()
    yield
    assert fhir.versions() == before


@pytest.mark.usefixtures("nothing_stored")
class TestErrors:
    def test_unknown_type(self, fhir: Fhir) -> None:
        for response in (fhir.get("Spaceship"), fhir.post("Spaceship", {"resourceType": "X"}),
                         fhir.get("Spaceship/1"), fhir.put("Spaceship/1", {"id": "1"})):
            body = _assert_outcome(response, 404)
            assert body["issue"][0]["code"] == "not-supported"

    def test_bad_id(self, fhir: Fhir) -> None:
        for path in ("Patient/has_underscore", f"Patient/{'a' * 65}"):
            _assert_outcome(fhir.get(path), 400)
            _assert_outcome(fhir.put(path, {**patient(1), "id": path.split("/")[1]}), 400)

    def test_unsupported_method(self, fhir: Fhir) -> None:
        response = fhir.post("Patient/abc", patient(2))
        _assert_outcome(response, 405)
        assert "PUT" in response.headers["Allow"]
        _assert_outcome(fhir.delete("metadata"), 405)

    def test_unknown_path(self, fhir: Fhir) -> None:
        _assert_outcome(fhir.get("Patient/1/_history/1/extra"), 404)
        _assert_outcome(requests.get(fhir.base.removesuffix("/fhir") + "/nowhere",
                                     timeout=10), 404)

    def test_unsupported_media_type(self, fhir: Fhir) -> None:
        for content_type in ("text/plain", "application/fhir+xml", "application/xml"):
            _assert_outcome(fhir.post("Patient", '{"resourceType": "Patient"}',
                                      content_type=content_type), 415)
        _assert_outcome(fhir.http.post(fhir.url("Patient"), data=b"{}", timeout=10), 415)
        _assert_outcome(fhir.post("", {"resourceType": "Bundle"}, content_type="text/plain"),
                        415)

    def test_xml_is_not_acceptable(self, fhir: Fhir) -> None:
        _assert_outcome(fhir.get("Patient?_format=xml"), 406)
        _assert_outcome(fhir.get("metadata?_format=application/fhir+xml"), 406)
        _assert_outcome(fhir.get("Patient", headers={"Accept": "application/fhir+xml"}), 406)
        _assert_outcome(fhir.post("Patient?_format=xml", patient(3)), 406)
        assert fhir.get("Patient", headers={"Accept": "text/html,*/*;q=0.8"}).ok
        assert fhir.get("Patient?_format=json").ok

    def test_accept_parameters(self, fhir: Fhir) -> None:
        """A media range may carry a charset, a quality and the FHIR version (R4 http.html
        3.1.0.1.11 and 3.1.0.1.12); another FHIR version, q=0 or another charset is not
        ours."""
        for accept in ("application/fhir+json; fhirVersion=4.0", "application/fhir+json;"
                       " charset=utf-8", "application/json; charset=UTF-8",
                       "application/fhir+json;q=0.9", "text/json",
                       "application/fhir+xml, application/fhir+json; fhirVersion=4.0.1"):
            assert fhir.get("metadata", headers={"Accept": accept}).ok, accept
            assert fhir.get("Patient", headers={"Accept": accept}).ok, accept
        for accept in ("application/fhir+json; fhirVersion=3.0", "application/fhir+json;q=0",
                       "application/fhir+json; charset=iso-8859-1", "text/html"):
            _assert_outcome(fhir.get("Patient", headers={"Accept": accept}), 406)

    def test_body_too_large(self, fhir: Fhir) -> None:
        big = {**patient(4), "text": {"status": "generated",
                                      "div": f"<div>{'x' * MAX_BODY}</div>"}}
        _assert_outcome(fhir.post("Patient", big), 413)

        def chunks() -> Iterator[bytes]:
            yield b'{"resourceType": "Patient", "name": [{"family": "'
            for _ in range(MAX_BODY // 1024 + 2):
                yield b"x" * 1024
            yield b'"}]}'

        chunked = fhir.http.post(fhir.url("Patient"), data=chunks(), timeout=30,
                                 headers={"Content-Type": FHIR_JSON})
        _assert_outcome(chunked, 413)

    def test_long_urls_up_to_the_limit(self, fhir: Fhir) -> None:
        """A long _id list is a legitimate URL (6 KB); over 8 KiB is 414, before the token
        or the body are looked at."""
        ids = ",".join(f"id-{n:05d}" for n in range(700))
        assert 6000 < len(fhir.url(f"Patient?_id={ids}")) < 8000
        assert fhir.search(f"Patient?_id={ids}")["total"] == 0
        criteria = f"Patient?identifier={FNR_SYSTEM}|1&_id={ids},{ids}"
        refused(fhir.put(criteria, patient(6)), 414, "too-long")
        refused(requests.get(fhir.url(f"Patient?_id={ids},{ids}"), timeout=10), 414,
                "too-long")

    def test_header_fields_up_to_the_limit(self, fhir: Fhir) -> None:
        assert fhir.get("metadata", headers={"X-Note": "x" * 7000}).ok
        refused(fhir.post("Patient", patient(7), headers={"X-Note": "x" * 9000}), 431,
                "too-long", ["X-Note"])
        refused(fhir.get("Patient", headers={"Authorization": "Bearer " + "x" * 9000}), 431,
                "too-long", ["Authorization"])

    def test_malformed_bodies(self, fhir: Fhir) -> None:
        body = _assert_outcome(fhir.post("Patient", "{not json"), 400)
        assert body["issue"][0]["code"] == "structure"
        _assert_outcome(fhir.post("Patient", "[1, 2]"), 400)
        _assert_outcome(fhir.post("Patient", ""), 400)
        _assert_outcome(fhir.post("Patient", {"resourceType": "Goal"}), 400)

    def test_unexpected_errors_do_not_leak(self, fhir: Fhir) -> None:
        def explode(_: WriteContext) -> None:
            raise RuntimeError("secret internal detail")

        fhir.planbro.service.before_write.append(explode)
        body = _assert_outcome(fhir.post("Patient", patient(5)), 500)
        assert "secret" not in str(body)
        assert body["issue"][0]["code"] == "exception"
        fhir.planbro.service.before_write.remove(explode)


def test_repeated_keys_are_refused_with_their_path(fhir: Fhir) -> None:
    created = fhir.create(patient(8))
    pid = created["id"]
    before = fhir.versions()
    repeated = '{"resourceType": "Patient", "active": true, "active": false}'
    refused(fhir.post("Patient", repeated), 400, "structure", ["Patient.active"])
    in_a_list = (f'{{"resourceType": "Patient", "id": "{pid}", "name": '
                 '[{"family": "A"}, {"family": "B", "given": ["K"], "family": "C"}]}')
    refused(fhir.put(f"Patient/{pid}", in_a_list), 400, "structure",
            ["Patient.name[1].family"])
    escaped = '{"resourceType": "Patient", "\\u0061ctive": true, "active": false}'
    refused(fhir.post("Patient", escaped), 400, "structure", ["Patient.active"])
    bundle = ('{"resourceType": "Bundle", "type": "transaction", "entry": [{"request": '
              '{"method": "POST", "url": "Patient"}, "resource": {"resourceType": '
              '"Patient", "gender": "male", "gender": "female"}}]}')
    refused(fhir.post("", bundle), 400, "structure",
            ["Bundle.entry[0].resource.gender"])
    patch = '[{"op": "add", "path": "/active", "value": true, "value": false}]'
    refused(fhir.patch(f"Patient/{pid}", patch), 400, "structure", ["[0].value"])
    assert fhir.versions() == before
    # colons in values (written or escaped) are no repeat, nor is one key in two objects
    fine = ('{"resourceType": "Patient", "name": [{"family": "Nord: mann"}, '
            '{"family": "B\\u003a"}], "extension": [{"url": "urn:x:y", '
            '"valueString": "a:b"}]}')
    assert fhir.post("Patient", fine).status_code == 201
