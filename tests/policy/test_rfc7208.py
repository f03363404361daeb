# -*- test-case-name: tests.policy.test_rfc7208 -*-
"""
The openspf.org RFC 7208 test suite (C{tests/data/rfc7208-tests.yml}, see
C{tests/data/rfc7208-tests.LICENSE}) run through L{checkBlocking}, with each
document's zone data served by a real DNS server on loopback.

The zone data follows the suite's conventions (its header comment): a
C{TIMEOUT} entry makes the name's queries go unanswered, except for the
types the name has records of; C{NONE} stands for no record; and an C{SPF}
record (type 99) is also served as TXT, unless the name lists TXT entries of
its own.  The C{SPF} records are also served as type 99, which RFC 7208
ignores: the "Record lookup" and "Selecting records" documents check that
nothing depends on them.
"""

import re

import spf
import yaml
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.blocking import BlockingRunner
from qutemail.policy.spf import checkBlocking
from tests.dnsserver import ANSWER, SILENT, startDNSServer

SUITE = FilePath(__file__).parent().parent().child("data").child("rfc7208-tests.yml")

# Documents without TIMEOUT entries never wait for DNS; the others' cases
# get a short time, so that each timeout costs little.
TIMEOUT_SECONDS = 1.0
PLENTY_SECONDS = 10.0


def loadSuite() -> list[dict]:
    """
    @return: the suite's YAML documents.
    """
    with SUITE.open("r") as stream:
        return list(yaml.safe_load_all(stream))


def countCases() -> int:
    """
    Count the suite's test cases from the raw text, independently of the
    YAML parser: every case has exactly one C{result:} line, indented by
    four spaces.
    """
    text = SUITE.getContent().decode("utf-8")
    return len(re.findall(r"^    result:", text, re.MULTILINE))


def _bytes(value) -> bytes:
    """
    One character-string of the suite's TXT or SPF data.
    """
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _textValue(value) -> tuple[bytes, ...]:
    """
    The character-strings of one TXT or SPF record of the suite.

    A plain string is a single character-string (split by the server when
    over 255 bytes); a list gives the character-strings.  An empty list,
    "null text", cannot go on the wire: RFC 1035 §3.3.14 requires at least
    one character-string, and dnspython rejects the whole response.  The
    nearest record DNS can carry is one empty character-string, which is
    equally not an SPF record.
    """
    if isinstance(value, list):
        return tuple(_bytes(piece) for piece in value) or (b"",)
    return (_bytes(value),)


def zoneFor(zonedata: dict) -> tuple[list, dict]:
    """
    Translate one document's C{zonedata}.

    @return: C{(records, silent)}: the C{(name, type, value)} records for
        L{tests.dnsserver.DNSServer.load}, and for each name with a
        C{TIMEOUT} entry, the set of types it still answers.
    """
    records = []
    silent = {}
    for name, entries in zonedata.items():
        own = []
        timeout = False
        listsTXT = False
        for entry in entries:
            if entry == "TIMEOUT":
                timeout = True
                continue
            [(rtype, value)] = entry.items()
            listsTXT = listsTXT or rtype == "TXT"
            if value == "NONE":
                continue
            if rtype in ("TXT", "SPF"):
                value = _textValue(value)
            elif rtype == "MX":
                value = tuple(value)
            own.append((name, rtype, value))
        if not listsTXT:
            own += [(name, "TXT", value) for _, rtype, value in own if rtype == "SPF"]
        records += own
        if timeout:
            silent[name] = {rtype for _, rtype, _ in own}
    return records, silent


def matches(case: dict, outcome) -> bool:
    """
    Whether an L{SPFResult} is what a case expects: its result is the
    expected one (or one of them), and, for a case naming an explanation of
    a C{fail}, the explanation is that text (C{DEFAULT}: pyspf's default).
    """
    expected = case["result"]
    if outcome.result not in (expected if isinstance(expected, list) else [expected]):
        return False
    explanation = case.get("explanation")
    if explanation is None or outcome.result != "fail":
        return True
    if explanation == "DEFAULT":
        explanation = spf.EXPLANATIONS["fail"]
    return outcome.explanation == explanation


class SuiteDataTests(SynchronousTestCase):
    """
    The suite's data and its translation to DNS records.
    """

    def test_count(self):
        """
        The YAML documents hold as many cases as the text has C{result:}
        lines, each case with a host, a sender, a HELO name and a result.
        """
        cases = [case for document in loadSuite() for case in document["tests"].values()]
        self.assertEqual(len(cases), countCases())
        self.assertGreater(len(cases), 200)
        for case in cases:
            self.assertLessEqual({"host", "mailfrom", "helo", "result"}, set(case))

    def test_zone(self):
        """
        SPF records are also TXT records unless the name lists TXT entries,
        C{NONE} gives no record, and a C{TIMEOUT} name answers only for the
        types it has.
        """
        records, silent = zoneFor({
            "a.test": [{"SPF": "v=spf1 -all"}, {"A": "192.0.2.1"}],
            "b.test": [{"SPF": "v=spf1 +all"}, {"TXT": "NONE"}, "TIMEOUT"],
            "c.test": [{"TXT": "v=spf1 -all"}, {"SPF": ["v=spf1", " -all"]}, "TIMEOUT"],
            "d.test": [{"SPF": []}, {"MX": [0, "a.test"]}],
        })
        self.assertEqual(sorted(records), sorted([
            ("a.test", "SPF", (b"v=spf1 -all",)), ("a.test", "A", "192.0.2.1"),
            ("a.test", "TXT", (b"v=spf1 -all",)),
            ("b.test", "SPF", (b"v=spf1 +all",)),
            ("c.test", "TXT", (b"v=spf1 -all",)), ("c.test", "SPF", (b"v=spf1", b" -all")),
            ("d.test", "SPF", (b"",)), ("d.test", "MX", (0, "a.test")), ("d.test", "TXT", (b"",)),
        ]))
        self.assertEqual(silent, {"b.test": {"SPF"}, "c.test": {"TXT", "SPF"}})


class RFC7208SuiteTests(TestCase):
    """
    Every case of the suite, through our SPF check and real DNS.
    """

    async def test_suite(self):
        """
        Every case gives its expected result (and explanation, where it
        names one); the number of cases run, printed, is the number in the
        file.
        """
        runner = BlockingRunner(reactor, maxThreads=16)
        runner.startService()
        self.addCleanup(runner.stopService)
        checks = []
        for document in loadSuite():
            records, silent = zoneFor(document["zonedata"])
            server = await startDNSServer(self, records)
            for name, answered in silent.items():
                server.setMode(SILENT, name)
                for rtype in answered:
                    server.setMode(ANSWER, name, rtype)
            timeoutSeconds = TIMEOUT_SECONDS if silent else PLENTY_SECONDS
            for caseName, case in document["tests"].items():
                # One case has "strict: 2", pyspf's record-checker mode; the
                # suite lets other implementations ignore it, and so do we
                run = runner.run(checkBlocking, server.nameservers, timeoutSeconds, case["host"],
                                 case["mailfrom"], case["helo"])
                run.addCallback(lambda outcome, caseName=caseName, case=case: (caseName, case, outcome))
                checks.append(run)
        outcomes = await gatherResults(checks, consumeErrors=True)
        failures = [f"{name}: expected {case['result']!r} {case.get('explanation', '')!r}, "
                    f"got {outcome.result!r} {outcome.explanation!r}"
                    for name, case, outcome in outcomes if not matches(case, outcome)]
        # The acceptance criterion: the count of cases run is printed.
        print(f"\nRFC 7208 test suite: {len(outcomes)} cases run, {len(outcomes) - len(failures)} passed")
        self.assertEqual(failures, [])
        self.assertEqual(len(outcomes), countCases())
