package main

import (
	"encoding/json"
	"net/http"
	"sort"
	"sync"
)

// StatsPath is answered by the guard itself (never passed to the backend): how many gRPC calls
// each identity made through this guard's inbound listeners and how many message bytes went each
// way (requests from the caller, responses to it). For a party's TF port, the responses to
// /tensorflow.WorkerService/RecvTensor are the tensors this party sent to that caller, so
// `make bench` reads rounds and bytes per party per inference from here. Served like
// RefusalsPath (health listener when listed, HTTP inbound to identities whose rules admit it).
// Only metadata: identities, methods, counts and byte totals; never a payload.
const StatsPath = "/guard/stats"

// CallStats is one (listener, caller identity, method) row (docs/mesh.md).
type CallStats struct {
	Listener      string `json:"listener"`
	Identity      string `json:"identity"`
	Method        string `json:"method"`
	Calls         int64  `json:"calls"`
	RequestBytes  int64  `json:"requestBytes"`
	ResponseBytes int64  `json:"responseBytes"`
}

type statsKey struct{ listener, identity, method string }

type callStatsLog struct {
	mu      sync.Mutex
	entries map[statsKey]*CallStats
}

// maxStatsRows bounds the rows kept (identities and methods come from admitted callers only).
const maxStatsRows = 256

// callStatsAll is the process-wide table every gRPC inbound adds to.
var callStatsAll = &callStatsLog{entries: map[statsKey]*CallStats{}}

// add counts one finished call.
func (l *callStatsLog) add(listener, identity, method string, req, resp int64) {
	k := statsKey{listener, identity, method}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[k]
	if !ok {
		if len(l.entries) >= maxStatsRows {
			return
		}
		e = &CallStats{Listener: listener, Identity: identity, Method: method}
		l.entries[k] = e
	}
	e.Calls++
	e.RequestBytes += req
	e.ResponseBytes += resp
}

func (l *callStatsLog) snapshot() []CallStats {
	l.mu.Lock()
	out := make([]CallStats, 0, len(l.entries))
	for _, e := range l.entries {
		out = append(out, *e)
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Listener != b.Listener {
			return a.Listener < b.Listener
		}
		if a.Identity != b.Identity {
			return a.Identity < b.Identity
		}
		return a.Method < b.Method
	})
	return out
}

func (l *callStatsLog) serve(w http.ResponseWriter, self string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{"identity": self, "calls": l.snapshot()})
}
