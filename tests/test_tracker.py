"""The tracker on real short worlds: complete, versioned, schema'd, and equal to what the world recorded."""

import json
from collections import Counter, defaultdict

import jsonschema

import schemas
from conftest import agents_of, make_world
from hrlxf_agent.registry import resolve
from hrlxf_agent.snapshot import Snapshot
from hrlxf_agent.tracker import tracked


def test_every_decision_once_with_its_snapshot_version_and_the_contracts_match(tmp_path):
    penguin = resolve("PenguinAgent")
    sent = Counter()  # the responses the agent really hands to negmas, counted apart from the tracker
    calls = defaultdict(list)  # the partners of each batch call, in order

    class Counted(penguin):
        def first_proposals(self):
            out = super().first_proposals()
            sent.update((self.id, p) for p in out)
            calls[self.id].append(set(out))
            return out

        def counter_all(self, offers, states):
            out = super().counter_all(offers, states)
            sent.update((self.id, p) for p in set(out) | set(self.negotiators))
            calls[self.id].append(set(out) | set(self.negotiators))
            return out

    cls = tracked(Counted, tmp_path)
    world = make_world([cls, resolve("AS0"), resolve("XenoSotaAgent")], steps=12, seed=9)
    world.run()
    agents = agents_of(world, cls)
    assert agents
    validator = jsonschema.Draft202012Validator(schemas.load("events"))
    for aid, agent in agents.items():
        agent.hook().close()
        events = [json.loads(line) for line in (tmp_path / f"{aid}.jsonl").read_text().splitlines()]
        for e in events:
            validator.validate(e)
        kinds = Counter(e["type"] for e in events)
        assert kinds["agent_initialized"] == 1 and kinds["day_snapshot"] == 12
        decisions = [e for e in events if e["type"] == "decision"]
        logged = Counter((aid, e["partner"]) for e in decisions if e["kind"] in ("first_proposals", "counter_all"))
        assert logged == Counter({k: v for k, v in sent.items() if k[0] == aid})  # each once
        # one batch id per call: the threads decided together share it, in call order
        batches = defaultdict(set)
        for e in decisions:
            if e["kind"] in ("first_proposals", "counter_all"):
                batches[e["batch"]].add(e["partner"])
        assert [batches[b] for b in sorted(batches)] == [c for c in calls[aid] if c]
        assert [e["batch"] for e in decisions] == sorted(e["batch"] for e in decisions)
        # negmas' propose echoing a batch's END is not a second decision
        last = {}
        for e in decisions:
            before = last.get((e["step"], e["partner"]))
            assert not (e["kind"] == "propose" and e["op"] == "end" and before and before["op"] == "end")
            last[(e["step"], e["partner"])] = e
        # the version a decision saw = deals made before it that day
        deals = 0
        for e in events:
            if e["type"] == "negotiation_end" and e["success"]:
                deals += 1
                assert e["version"] == deals
            elif e["type"] == "decision":
                assert e["version"] == deals
        # contracts signed in the log = the world's contracts of this agent
        signed = sorted(tuple(e["agreement"]) for e in events if e["type"] == "negotiation_end" and e["success"])
        world_contracts = sorted(
            (c["quantity"], c["delivery_time"], float(c["unit_price"])) for c in world.saved_contracts
            if aid in (c["seller"], c["buyer"]) and "SELLER" not in (c["seller"], c["buyer"]) and "BUYER" not in (c["seller"], c["buyer"])
        )
        assert signed == world_contracts
        snap = Snapshot.from_dict(next(e for e in events if e["type"] == "day_snapshot" and e["step"] == 5)["snapshot"])
        assert snap.step == 5 and snap.initial_balance > 0
