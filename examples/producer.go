// Send one event to postbox with Go's standard library.
//
//	POSTBOX_URL=http://127.0.0.1:8080 go run examples/producer.go
//
// Sends an `order.paid` v1 event in postbox's native envelope, with a client-chosen id so a
// retry of the same request is answered as a replay (202, Idempotent-Replayed: true) instead of
// being stored twice.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	base := os.Getenv("POSTBOX_URL")
	if base == "" {
		base = "http://127.0.0.1:8080"
	}
	event := map[string]any{
		"type":    "order.paid",
		"version": "v1",
		"id":      fmt.Sprintf("order-%d", time.Now().UnixNano()),
		"source":  "/examples/producer-go",
		"data":    map[string]any{"order_id": "o-1001", "amount": 25.5, "currency": "EUR"},
	}
	body, err := json.Marshal(event)
	if err != nil {
		panic(err)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	// Retrying the identical body after a timeout or a 503/429 is safe: same (source, id).
	for attempt := 1; attempt <= 3; attempt++ {
		resp, err := client.Post(base+"/v1/events", "application/json", bytes.NewReader(body))
		if err != nil {
			fmt.Fprintln(os.Stderr, "attempt", attempt, "failed:", err)
			time.Sleep(time.Duration(attempt) * time.Second)
			continue
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.Status, resp.Header.Get("Idempotent-Replayed"), string(answer))
		switch {
		case resp.StatusCode == http.StatusAccepted:
			return
		case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests:
			time.Sleep(time.Duration(attempt) * time.Second) // or honour Retry-After
		default:
			os.Exit(1) // 4xx: the problem+json body says what is wrong; retrying will not help
		}
	}
	os.Exit(1)
}
