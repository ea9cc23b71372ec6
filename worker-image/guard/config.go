package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is the guard's JSON configuration (docs/mesh.md, "Guard config").
type Config struct {
	Identity string            `json:"identity"`
	CA       string            `json:"ca"`
	Cert     string            `json:"cert"`
	Key      string            `json:"key"`
	Devices  map[string]string `json:"devices"`
	Inbound  []Inbound         `json:"inbound"`
	Outbound []Outbound        `json:"outbound"`
	Health   *Health           `json:"health,omitempty"` // plain probes listener (health.go)
	Public   *Public           `json:"public,omitempty"` // TLS for the model's clients (public.go)
}

// meshless: only a public TLS listener (a plain TLS terminator, no mesh identity).
func (c *Config) meshless() bool {
	return c.Public != nil && len(c.Inbound) == 0 && len(c.Outbound) == 0 && c.Health == nil
}

// Inbound is one mTLS listener that forwards to a plain loopback backend.
type Inbound struct {
	Kind    string `json:"kind"` // "grpc" or "http"
	Listen  string `json:"listen"`
	Backend string `json:"backend"`
	Rules   []Rule `json:"rules"`
}

// Rule admits callers whose identity matches one of Identities to Methods
// (and, for http, to paths starting with one of Paths).
type Rule struct {
	Identities []string `json:"identities"`
	Methods    []string `json:"methods"`
	Paths      []string `json:"paths,omitempty"`
}

// Outbound is a plain loopback listener whose connections are carried over mTLS to Dial.
type Outbound struct {
	Listen string `json:"listen"`
	Dial   string `json:"dial"`
	Expect string `json:"expect"`
}

// Addr is a parsed listen/dial address.
type Addr struct {
	Network string // "tcp" or "unix"
	Address string // host:port or socket path
}

func (a Addr) String() string { return a.Network + ":" + a.Address }

// parseAddr accepts "tcp:HOST:PORT", "unix:/path" and, for convenience, a bare "HOST:PORT".
func parseAddr(s string) (Addr, error) {
	switch {
	case strings.HasPrefix(s, "unix:"):
		p := strings.TrimPrefix(s, "unix:")
		if p == "" || !strings.HasPrefix(p, "/") {
			return Addr{}, fmt.Errorf("%q: unix socket path must be absolute", s)
		}
		return Addr{"unix", p}, nil
	case strings.HasPrefix(s, "tcp:"):
		s = strings.TrimPrefix(s, "tcp:")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("%q: want tcp:HOST:PORT, HOST:PORT or unix:/path (%v)", s, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return Addr{}, fmt.Errorf("%q: bad port %q", s, port)
	}
	return Addr{"tcp", net.JoinHostPort(host, port)}, nil
}

func isLoopback(a Addr) bool {
	if a.Network == "unix" {
		return true
	}
	host, _, _ := net.SplitHostPort(a.Address)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// matchPattern: exact, or a trailing "*" matches any suffix ("share-g*", "*").
func matchPattern(pattern, identity string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(identity, p)
	}
	return pattern == identity
}

func validPattern(p string) error {
	if p == "" {
		return errors.New("empty identity pattern")
	}
	if i := strings.Index(p, "*"); i >= 0 && i != len(p)-1 {
		return fmt.Errorf("identity pattern %q: '*' is allowed only at the end", p)
	}
	return nil
}

func matchAny(patterns []string, identity string) bool {
	for _, p := range patterns {
		if matchPattern(p, identity) {
			return true
		}
	}
	return false
}

// deviceFor returns devices[pattern matching identity]: an exact key wins, then the
// longest matching prefix pattern.
func (c *Config) deviceFor(identity string) (string, bool) {
	if d, ok := c.Devices[identity]; ok {
		return d, true
	}
	best, bestLen, found := "", -1, false
	for p, d := range c.Devices {
		if matchPattern(p, identity) && len(p) > bestLen {
			best, bestLen, found = d, len(p), true
		}
	}
	return best, found
}

// Loaded is a validated config with its key material.
type Loaded struct {
	*Config
	CAPool *x509.CertPool
	Cert   tls.Certificate
}

// LoadConfig reads, strictly decodes and validates the config, and loads the key material.
func LoadConfig(path string) (*Loaded, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%s: trailing data after the JSON object", path)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c.load()
}

func (c *Config) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if err := c.Public.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.meshless() {
		return errors.Join(errs...)
	}
	if c.Identity == "" || strings.ContainsAny(c.Identity, "*; \t") {
		bad("identity: must be a plain non-empty name, got %q", c.Identity)
	}
	for k, v := range map[string]string{"ca": c.CA, "cert": c.Cert, "key": c.Key} {
		if v == "" {
			bad("%s: required", k)
		}
	}
	for p, d := range c.Devices {
		if err := validPattern(p); err != nil {
			bad("devices: %v", err)
		}
		if !strings.HasPrefix(d, "/job:") || strings.HasSuffix(d, "/") {
			bad("devices[%q]: want a TF device prefix like /job:tfe/replica:0/task:0, got %q", p, d)
		}
	}
	if err := c.Health.validate(); err != nil {
		errs = append(errs, err)
	}
	if len(c.Inbound) == 0 && len(c.Outbound) == 0 {
		bad("no inbound and no outbound listeners")
	}
	seen := map[string]string{}
	claim := func(where string, a Addr) {
		if a.Network == "tcp" && strings.HasSuffix(a.Address, ":0") {
			return // an ephemeral port (tests) never collides
		}
		if prev, ok := seen[a.String()]; ok {
			bad("%s: listen address %s already used by %s", where, a, prev)
		}
		seen[a.String()] = where
	}
	for i, in := range c.Inbound {
		where := fmt.Sprintf("inbound[%d]", i)
		if in.Kind != "grpc" && in.Kind != "http" {
			bad("%s.kind: want \"grpc\" or \"http\", got %q", where, in.Kind)
		}
		if a, err := parseAddr(in.Listen); err != nil {
			bad("%s.listen: %v", where, err)
		} else {
			claim(where, a)
		}
		if in.Backend == "" {
			bad("%s.backend: required", where)
		} else if _, err := parseAddr(in.Backend); err != nil {
			bad("%s.backend: %v", where, err)
		}
		if len(in.Rules) == 0 {
			bad("%s.rules: at least one rule is required (nothing would be admitted)", where)
		}
		for j, r := range in.Rules {
			rw := fmt.Sprintf("%s.rules[%d]", where, j)
			if len(r.Identities) == 0 {
				bad("%s.identities: required", rw)
			}
			for _, p := range r.Identities {
				if err := validPattern(p); err != nil {
					bad("%s.identities: %v", rw, err)
				}
			}
			if len(r.Methods) == 0 {
				bad("%s.methods: required", rw)
			}
			for _, m := range r.Methods {
				switch {
				case m == "*":
				case in.Kind == "grpc" && !validGRPCMethod(m):
					bad("%s.methods: %q is not a full gRPC method name (/package.Service/Method) or \"*\"", rw, m)
				case in.Kind == "http" && !validHTTPMethod(m):
					bad("%s.methods: %q is not an HTTP method (GET, POST, ...) or \"*\"", rw, m)
				}
			}
			switch in.Kind {
			case "grpc":
				if len(r.Paths) > 0 {
					bad("%s.paths: only for http inbound listeners", rw)
				}
			case "http":
				if len(r.Paths) == 0 {
					bad("%s.paths: required for http rules (path prefixes, e.g. \"/v1/\")", rw)
				}
				for _, p := range r.Paths {
					if !strings.HasPrefix(p, "/") {
						bad("%s.paths: %q must start with /", rw, p)
					}
				}
			}
		}
	}
	for i, out := range c.Outbound {
		where := fmt.Sprintf("outbound[%d]", i)
		if a, err := parseAddr(out.Listen); err != nil {
			bad("%s.listen: %v", where, err)
		} else {
			if !isLoopback(a) {
				bad("%s.listen: %s is not a loopback address (outbound listeners are plain TCP)", where, a)
			}
			claim(where, a)
		}
		if _, err := parseAddr(out.Dial); err != nil {
			bad("%s.dial: %v", where, err)
		}
		if err := validPattern(out.Expect); err != nil {
			bad("%s.expect: %v", where, err)
		}
	}
	return errors.Join(errs...)
}

func validGRPCMethod(m string) bool {
	parts := strings.Split(m, "/")
	return len(parts) == 3 && parts[0] == "" && parts[1] != "" && parts[2] != ""
}

func validHTTPMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if r < 'A' || r > 'Z' {
			return false
		}
	}
	return true
}

func (c *Config) load() (*Loaded, error) {
	if c.meshless() {
		return &Loaded{Config: c}, nil
	}
	caPEM, err := os.ReadFile(c.CA)
	if err != nil {
		return nil, fmt.Errorf("ca: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("ca: %s holds no PEM certificate", c.CA)
	}
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("cert/key: %v", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("cert: %v", err)
		}
	}
	if leaf.Subject.CommonName != c.Identity {
		return nil, fmt.Errorf("cert: %s has Subject CN %q, but identity is %q", c.Cert, leaf.Subject.CommonName, c.Identity)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(ic)
		}
	}
	// The same certificate serves inbound (server) and outbound (client) connections.
	usages := map[string]x509.ExtKeyUsage{}
	if len(c.Inbound) > 0 {
		usages["serverAuth"] = x509.ExtKeyUsageServerAuth
	}
	if len(c.Outbound) > 0 {
		usages["clientAuth"] = x509.ExtKeyUsageClientAuth
	}
	for name, u := range usages {
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: pool, Intermediates: inter, CurrentTime: time.Now(), KeyUsages: []x509.ExtKeyUsage{u},
		}); err != nil {
			return nil, fmt.Errorf("cert: %s does not verify against ca %s for %s: %v", c.Cert, c.CA, name, err)
		}
	}
	return &Loaded{Config: c, CAPool: pool, Cert: cert}, nil
}
