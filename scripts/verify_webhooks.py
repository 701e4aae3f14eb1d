#!/usr/bin/env python3
"""Verifies recorded webhook deliveries with the `standardwebhooks` package (PyPI), an
implementation independent of Roomcast's: every signature must verify under SECRET.

Usage: verify_webhooks.py DELIVERIES.json SECRET
DELIVERIES.json is a list of {id, timestamp, signature, body}. Prints how many verified;
exits 1 on the first that does not.
"""
import json
import sys
import time

from standardwebhooks.webhooks import Webhook

deliveries = json.load(open(sys.argv[1]))
hook = Webhook(sys.argv[2])
for d in deliveries:
    headers = {
        "webhook-id": d["id"],
        "webhook-timestamp": d["timestamp"],
        "webhook-signature": d["signature"],
    }
    try:
        # verify() also refuses timestamps more than 5 minutes off: tests run in minutes.
        hook.verify(d["body"], headers)
    except Exception as e:  # noqa: BLE001 - any refusal fails the test
        print(f"delivery {d['id']} at {d['timestamp']} (now {int(time.time())}): {e!r}")
        sys.exit(1)
print(len(deliveries))
