package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, v any) string {
	t.Helper()
	var raw []byte
	if s, ok := v.(string); ok {
		raw = []byte(s)
	} else {
		raw, _ = json.Marshal(v)
	}
	p := filepath.Join(t.TempDir(), "guard.json")
	os.WriteFile(p, raw, 0o600)
	return p
}

func TestConfigValidation(t *testing.T) {
	ca := newCA(t, "model-ca")
	own := ca.issue(t, "server0")
	good := func() Config {
		return Config{Identity: "server0", CA: ca.path, Cert: own.cert, Key: own.key, Devices: testDevices,
			Inbound: []Inbound{
				{Kind: "grpc", Listen: "tcp:0.0.0.0:5440", Backend: "127.0.0.1:4440", Rules: []Rule{
					{Identities: []string{"server1", "share-g*"}, Methods: []string{recvTensorMethod}}}},
				{Kind: "http", Listen: "unix:/tmp/x.http.sock", Backend: "127.0.0.1:8081", Rules: []Rule{
					{Identities: []string{"operator"}, Methods: []string{"GET"}, Paths: []string{"/v1/public-key"}}}},
			},
			Outbound: []Outbound{{Listen: "127.0.0.1:4441", Dial: "tcp:server1.x:5440", Expect: "server1"}},
		}
	}
	if _, err := LoadConfig(writeConfig(t, good())); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	if rc := run([]string{"--check-config", "--config", writeConfig(t, good())}); rc != 0 {
		t.Fatalf("--check-config of a good config: rc %d", rc)
	}

	other := newCA(t, "other")
	foreign := other.issue(t, "server0")
	wrongCN := ca.issue(t, "server1")
	expired := ca.issueValid(t, "server0", time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	cases := map[string]func(c *Config){
		"identity":                   func(c *Config) { c.Identity = "" },
		"'*' is allowed only":        func(c *Config) { c.Inbound[0].Rules[0].Identities = []string{"se*ver"} },
		"kind":                       func(c *Config) { c.Inbound[0].Kind = "tcp" },
		"listen":                     func(c *Config) { c.Inbound[0].Listen = "0.0.0.0" },
		"absolute":                   func(c *Config) { c.Inbound[1].Listen = "unix:rel.sock" },
		"backend: required":          func(c *Config) { c.Inbound[0].Backend = "" },
		"at least one rule":          func(c *Config) { c.Inbound[0].Rules = nil },
		"full gRPC method":           func(c *Config) { c.Inbound[0].Rules[0].Methods = []string{"RecvTensor"} },
		"not an HTTP method":         func(c *Config) { c.Inbound[1].Rules[0].Methods = []string{"get"} },
		"paths: required":            func(c *Config) { c.Inbound[1].Rules[0].Paths = nil },
		"only for http":              func(c *Config) { c.Inbound[0].Rules[0].Paths = []string{"/"} },
		"must start with /":          func(c *Config) { c.Inbound[1].Rules[0].Paths = []string{"v1"} },
		"not a loopback":             func(c *Config) { c.Outbound[0].Listen = "0.0.0.0:4441" },
		"already used":               func(c *Config) { c.Outbound[0].Listen = "tcp:0.0.0.0:5440" },
		"expect":                     func(c *Config) { c.Outbound[0].Expect = "" },
		"devices[":                   func(c *Config) { c.Devices = map[string]string{"server0": "tfe/task:0"} },
		"no inbound and no outbound": func(c *Config) { c.Inbound, c.Outbound = nil, nil },
		"unknown authority":          func(c *Config) { c.Cert, c.Key = foreign.cert, foreign.key },
		"has Subject CN \"server1\"": func(c *Config) { c.Cert, c.Key = wrongCN.cert, wrongCN.key },
		"expired":                    func(c *Config) { c.Cert, c.Key = expired.cert, expired.key },
		"ca:":                        func(c *Config) { c.CA = "/nonexistent/ca.crt" },
	}
	for want, mutate := range cases {
		c := good()
		mutate(&c)
		_, err := LoadConfig(writeConfig(t, c))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	for name, raw := range map[string]string{
		"unknown field": `{"identity": "server0", "inbund": []}`,
		"trailing":      `{"identity": "server0"} {}`,
	} {
		p := writeConfig(t, raw)
		if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: got %v", name, err)
		}
		if rc := run([]string{"--check-config", "--config", p}); rc != 2 {
			t.Errorf("%s: --check-config rc %d, want 2", name, rc)
		}
	}
	if rc := run(nil); rc != 2 {
		t.Errorf("no --config: rc %d", rc)
	}
}

func TestPatternsAndDevices(t *testing.T) {
	for _, c := range []struct {
		p, id string
		want  bool
	}{{"server1", "server1", true}, {"server1", "server10", false}, {"share-g*", "share-g12", true},
		{"share-g*", "share-", false}, {"*", "anyone", true}} {
		if matchPattern(c.p, c.id) != c.want {
			t.Errorf("matchPattern(%q, %q) != %v", c.p, c.id, c.want)
		}
	}
	c := &Config{Devices: map[string]string{"share-g*": "/job:share/replica:0/task:0", "share-g1": "/job:special", "*": "/job:any"}}
	for id, want := range map[string]string{"share-g1": "/job:special", "share-g2": "/job:share/replica:0/task:0", "x": "/job:any"} {
		if d, _ := c.deviceFor(id); d != want {
			t.Errorf("deviceFor(%s) = %s, want %s", id, d, want)
		}
	}
	for p, want := range map[string]bool{"/v1/x": true, "/v1/": true, "/v1/../x": false, "//v1": false, "/v1/./x": false, "/": true} {
		if canonicalPath(p) != want {
			t.Errorf("canonicalPath(%q) != %v", p, want)
		}
	}
}
