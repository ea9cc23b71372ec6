package main

import (
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"time"
)

// RefusalsPath is answered by the guard itself (never passed to the backend): what it refused
// lately, for the operator to put into the EncryptedModel's status (which identity, why).
// Served on the health listener when listed in its paths, and on an HTTP inbound to identities
// whose rules admit GET of it. Only metadata: identities (certificate CNs), listener names,
// reasons, counts and times; never a certificate, key or payload.
const RefusalsPath = "/guard/refusals"

// maxRefusals bounds the distinct (listener, identity, reason) entries kept; the oldest goes.
const maxRefusals = 64

// Refusal is one kind of refusal: the wire form is tfe_client.wire.GuardRefusal.
type Refusal struct {
	Listener  string    `json:"listener"`
	Identity  string    `json:"identity"`
	Reason    string    `json:"reason"`
	Count     int64     `json:"count"`
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
}

type refusalKey struct{ listener, identity, reason string }

type refusalLog struct {
	mu      sync.Mutex
	entries map[refusalKey]*Refusal
	now     func() time.Time
}

func newRefusalLog(now func() time.Time) *refusalLog {
	return &refusalLog{entries: map[refusalKey]*Refusal{}, now: now}
}

// refusals is the process-wide log every listener records into.
var refusals = newRefusalLog(time.Now)

// record notes one refusal. identity is "-" when no certificate named anyone.
func (l *refusalLog) record(listener, identity, reason string) {
	if identity == "" {
		identity = "-"
	}
	k := refusalKey{listener, identity, reason}
	t := l.now().UTC()
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.entries[k]; ok {
		e.Count++
		e.LastSeen = t
		return
	}
	if len(l.entries) >= maxRefusals {
		var oldest refusalKey
		first := true
		for key, e := range l.entries {
			if first || e.LastSeen.Before(l.entries[oldest].LastSeen) {
				oldest, first = key, false
			}
		}
		delete(l.entries, oldest)
	}
	l.entries[k] = &Refusal{Listener: listener, Identity: identity, Reason: reason, Count: 1, FirstSeen: t, LastSeen: t}
}

// snapshot: most recent first.
func (l *refusalLog) snapshot() []Refusal {
	l.mu.Lock()
	out := make([]Refusal, 0, len(l.entries))
	for _, e := range l.entries {
		out = append(out, *e)
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].LastSeen.Equal(out[j].LastSeen) {
			return out[i].LastSeen.After(out[j].LastSeen)
		}
		return out[i].Listener+out[i].Identity+out[i].Reason < out[j].Listener+out[j].Identity+out[j].Reason
	})
	return out
}

func (l *refusalLog) serve(w http.ResponseWriter, self string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{"identity": self, "refusals": l.snapshot()})
}
