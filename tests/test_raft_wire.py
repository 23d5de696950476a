"""The Raft port's wire (cluster/raft_wire.py): AES-GCM tokens in place of Fernet, pickle protocol 5."""
import pickle

import pytest
from cryptography.exceptions import InvalidTag

import pysyncobj.pickle
import pysyncobj.syncobj
import pysyncobj.utility
from cluster.raft_wire import InvalidToken, RaftCipher, cipher_for, install_raft_wire


def test_a_token_round_trips_with_its_timestamp():
    c = cipher_for("secret")
    token = c.encrypt_at_time(b"append_entries", 1234)
    assert b"append_entries" not in token
    assert c.extract_timestamp(token) == 1234
    assert cipher_for("secret").decrypt(token) == b"append_entries"     # another node, same secret


def test_every_token_has_its_own_nonce():
    c = cipher_for("secret")
    assert c.encrypt_at_time(b"same", 1) != c.encrypt_at_time(b"same", 1)


@pytest.mark.parametrize("pos", [0, 3, 12, 25, -1])
def test_any_changed_byte_is_refused(pos):
    c = cipher_for("secret")
    token = bytearray(c.encrypt_at_time(b"vote for me", 7))
    token[pos] ^= 0x01
    with pytest.raises((InvalidToken, InvalidTag)):
        c.decrypt(bytes(token))


def test_a_raised_timestamp_does_not_authenticate():
    # pysyncobj refuses timestamps going down; a replayed token with a forged later
    # timestamp must not pass either.
    c = cipher_for("secret")
    token = bytearray(c.encrypt_at_time(b"x", 7))
    token[1] = 99
    assert c.extract_timestamp(bytes(token)) == 99
    with pytest.raises(InvalidTag):
        c.decrypt(bytes(token))


def test_another_secret_and_short_tokens_are_refused():
    token = cipher_for("secret").encrypt_at_time(b"x", 1)
    with pytest.raises(InvalidTag):
        cipher_for("other").decrypt(token)
    with pytest.raises(InvalidToken):
        cipher_for("secret").extract_timestamp(token[:20])


def test_the_nonce_prefix_changes_before_the_counter_wraps():
    c = RaftCipher(b"k" * 32)
    c._counter = 2**32
    before = c._prefix
    c.encrypt_at_time(b"x", 1)
    assert c._prefix != before and c._counter == 1


def test_installed_where_pysyncobj_builds_its_encryptor():
    install_raft_wire()
    assert pysyncobj.syncobj.getEncryptor is cipher_for and pysyncobj.utility.getEncryptor is cipher_for


def test_entries_are_pickled_with_protocol_5_and_old_pickles_still_load():
    install_raft_wire()
    entry = [b"\xff\x00" * 8, 7]
    data = pysyncobj.pickle.dumps(entry)
    assert data[:2] == b"\x80\x05"
    assert b"\xc3\xbf" not in data          # the bytes went out as bytes, not as latin-1 text
    assert pysyncobj.pickle.loads(pickle.dumps(entry, 2)) == entry
