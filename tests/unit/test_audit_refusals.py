"""Which of the ingress's refusals were a part's own requests from inside."""
from launcher.commands.audit import refusals_by_sender

PARTS = {"10.1.2.3": "frontend", "10.1.2.4": "backend"}


def test_a_refusal_from_a_parts_address_is_labelled_as_that_parts_and_kept_apart():
    host = 'refused status=403 reason=cross-site request="POST / HTTP/1.1" host="127.0.0.1:8080" peer=172.22.0.1'
    inside = 'refused status=403 reason=foreign-origin request="POST / HTTP/1.1" host="x" peer=10.1.2.3'
    from_host, from_parts = refusals_by_sender([host, inside], PARTS)
    assert from_host == [host]
    assert from_parts == [{"part": "frontend", "line": inside}]


def test_a_line_that_names_a_part_elsewhere_than_its_peer_field_stays_the_hosts():
    # What a request carries (its path, Host, Origin) cannot pass for the peer.
    line = 'refused status=401 reason=no-token request="GET /peer=10.1.2.3 HTTP/1.1" host="peer=10.1.2.4" peer=172.22.0.1'
    assert refusals_by_sender([line], PARTS) == ([line], [])


def test_the_peer_is_read_before_the_refusals_nth():
    """The ingress's lines end with which refusal of its reason each was
    (nth=): the peer is still the part's address, not "10.1.2.3 nth=7"."""
    inside = 'refused status=403 reason=foreign-origin request="POST / HTTP/1.1" host="x" peer=10.1.2.3 nth=7'
    forged = 'refused status=401 reason=no-token request="GET / peer=10.1.2.3 nth=1" host="x" peer=172.22.0.1 nth=2'
    assert refusals_by_sender([inside, forged], PARTS) == ([forged], [{"part": "frontend", "line": inside}])
