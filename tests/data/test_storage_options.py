"""`--storage-option` settings: errors name the setting, never a credential's value."""

import pytest

from opensora_core.curation.storage import set_protocol_options


@pytest.mark.parametrize("setting", ["s3.secret:hunter2", "s3.secret", "gs.token={hunter2", "s3.key:hunter2"])
def test_a_malformed_credential_setting_is_refused_without_its_value(setting):
    with pytest.raises(ValueError) as err:
        set_protocol_options([setting])
    message = str(err.value)
    assert "hunter2" not in message and setting.split(".")[0] in message


def test_a_malformed_plain_setting_is_shown_whole():
    with pytest.raises(ValueError, match="'endpoint_url': expected PROTOCOL.KEY=VALUE"):
        set_protocol_options(["endpoint_url"])
    with pytest.raises(ValueError, match=r"s3.client_kwargs: '\{bad' is not valid JSON"):
        set_protocol_options(["s3.client_kwargs={bad"])
