#!/usr/bin/env bash
# postbox with curl: each way of sending an event, then its delivery state.
#   POSTBOX_URL=http://127.0.0.1:8080 examples/curl.sh
set -euo pipefail
URL="${POSTBOX_URL:-http://127.0.0.1:8080}"
RUN="$(date +%s)-$$"   # unique ids per run

echo '# native envelope (the shortest form; postbox assigns a UUIDv7 id)'
curl -fsS "$URL/v1/events" -H 'content-type: application/json' \
  -d '{"type":"order.paid","version":"v1","data":{"order_id":"o-1001","amount":25.5,"currency":"EUR"}}'
echo

echo '# CloudEvents structured mode (version from the .v1 suffix of type)'
curl -fsS "$URL/v1/events" -H 'content-type: application/cloudevents+json' \
  -d '{"specversion":"1.0","id":"order-'"$RUN"'","source":"/shop/checkout","type":"order.paid.v1","data":{"order_id":"o-1002","amount":12,"currency":"USD"}}'
echo

echo '# CloudEvents binary mode (attributes in ce-* headers, body = data)'
curl -fsS "$URL/v1/events" -H 'content-type: application/json' \
  -H 'ce-specversion: 1.0' -H "ce-id: signup-$RUN" -H 'ce-source: /accounts' -H 'ce-type: user.signed_up.v1' \
  -d '{"user_id":"u-77","email":"ada@example.com","plan":"pro"}'
echo

echo '# CloudEvents batch (atomic: all stored or none; version from dataschema here)'
curl -fsS "$URL/v1/events" -H 'content-type: application/cloudevents-batch+json' \
  -d '[{"specversion":"1.0","id":"b1-'"$RUN"'","source":"/shop","type":"order.paid","dataschema":"'"$URL"'/v1/schemas/order.paid/v2","data":{"order_id":"o-1","customer_id":"c-1","amount_minor":990,"currency":"EUR"}},
       {"specversion":"1.0","id":"b2-'"$RUN"'","source":"/shop","type":"user.signed_up.v1","data":{"user_id":"u-1","email":"bob@example.com"}}]'
echo

echo '# the same structured event again: a replay (Idempotent-Replayed: true), nothing new is published'
curl -fsS -i "$URL/v1/events" -H 'content-type: application/cloudevents+json' \
  -d '{"specversion":"1.0","id":"order-'"$RUN"'","source":"/shop/checkout","type":"order.paid.v1","data":{"order_id":"o-1002","amount":12,"currency":"USD"}}' \
  | grep -i -E '^(HTTP|idempotent-replayed)'

echo '# delivery state (pending, published or dead)'
sleep 1
curl -fsS "$URL/v1/events/order-$RUN?source=%2Fshop%2Fcheckout"
echo
