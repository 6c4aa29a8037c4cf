// Package auth is who may do what: API tokens (their text, their stored
// form in the JetStream KV bucket tandem_tokens, an in-memory cache each
// orchestrator keeps from a watch of the bucket), the principal a call runs
// as, and the scope checks the JobService handlers make through Require.
//
// A token is "tdm_<id>_<secret>": <id> is 1 to 64 of A-Z a-z 0-9 - (the `_`
// separates), <secret> is 32 random bytes in unpadded base64url (43
// characters). The bucket holds, under the id, a salt and SHA-256(salt ||
// secret) — never the secret. The secret is 256 random bits, so a fast salted
// hash is enough: there is nothing to brute-force that a slow hash would
// protect (a slow hash guards low-entropy passwords).
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Scope is a set of rights on a queue.
type Scope uint8

// The scopes (spec: docs/ARCHITECTURE.md, "Access").
const (
	Submit Scope = 1 << iota // SubmitJob, SubmitJobs
	Read                     // GetJob, WatchJobs, ListJobs, ListDeadLetters, ListQueues
	Cancel                   // CancelJob
	Admin                    // RetryDeadLetters, PurgeDeadLetters, PauseQueue, ResumeQueue (ListAudit: on every queue)

	AllScopes = Submit | Read | Cancel | Admin
)

var scopeNames = []struct {
	s    Scope
	name string
}{{Submit, "submit"}, {Read, "read"}, {Cancel, "cancel"}, {Admin, "admin"}}

// ScopeNames are the scope names in their canonical order.
func ScopeNames() []string {
	out := make([]string, len(scopeNames))
	for i, n := range scopeNames {
		out[i] = n.name
	}
	return out
}

// Names lists the scopes of s.
func (s Scope) Names() []string {
	var out []string
	for _, n := range scopeNames {
		if s&n.s != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

func (s Scope) String() string { return strings.Join(s.Names(), ",") }

// ParseScopes parses scope names ("submit", "read", "cancel", "admin").
func ParseScopes(names []string) (Scope, error) {
	var s Scope
	for _, n := range names {
		n = strings.TrimSpace(n)
		found := false
		for _, e := range scopeNames {
			if e.name == n {
				s, found = s|e.s, true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown scope %q (one of %s)", n, strings.Join(ScopeNames(), ", "))
		}
	}
	return s, nil
}

// Token text.
const (
	Prefix       = "tdm_"
	MaxID        = 64
	SecretBytes  = 32
	SecretLen    = 43 // base64url, no padding, of SecretBytes
	saltBytes    = 16
	MaxHeaderLen = 4096 // longest authorization value looked at
	// HashAlg names how Record.Hash is made.
	HashAlg = "sha256(salt||secret)"
)

var b64 = base64.RawURLEncoding

// ValidID checks a token id: 1 to MaxID of A-Z a-z 0-9 -.
func ValidID(id string) error {
	if id == "" || len(id) > MaxID {
		return fmt.Errorf("token id %q: must be 1 to %d characters of A-Z a-z 0-9 -", cutID(id), MaxID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("token id %q: character %d is not one of A-Z a-z 0-9 -", cutID(id), i)
		}
	}
	return nil
}

func cutID(id string) string {
	if len(id) > MaxID {
		return id[:MaxID] + "…"
	}
	return id
}

// Parse splits token text into its id and the raw secret bytes.
func Parse(tok string) (id string, secret []byte, err error) {
	rest, ok := strings.CutPrefix(tok, Prefix)
	if !ok {
		return "", nil, fmt.Errorf("not a Tandem token: it must look like %s<id>_<secret>", Prefix)
	}
	id, sec, ok := strings.Cut(rest, "_")
	if !ok {
		return "", nil, fmt.Errorf("not a Tandem token: it must look like %s<id>_<secret>", Prefix)
	}
	if err := ValidID(id); err != nil {
		return "", nil, err
	}
	if len(sec) != SecretLen {
		return "", nil, fmt.Errorf("token %q: the secret must be %d characters of base64url, is %d", id, SecretLen, len(sec))
	}
	secret, err = b64.DecodeString(sec)
	if err != nil || len(secret) != SecretBytes {
		return "", nil, fmt.Errorf("token %q: the secret is not %d characters of base64url", id, SecretLen)
	}
	return id, secret, nil
}

// Record is a token as stored in the bucket (JSON), keyed by its id.
type Record struct {
	ID      string `json:"id"`
	HashAlg string `json:"hash_alg"`
	Salt    []byte `json:"salt"`
	Hash    []byte `json:"hash"`
	// Queues are the scopes per queue; AllQueues the scopes on every queue.
	Queues    map[string][]string `json:"queues,omitempty"`
	AllQueues []string            `json:"all_queues,omitempty"`
	ExpiresAt *time.Time          `json:"expires_at,omitempty"`
	CreatedAt time.Time           `json:"created_at"`
	CreatedBy string              `json:"created_by"`
}

// New makes a token: its text (shown once) and the record to store.
func New(id string, queues map[string]Scope, all Scope, expires time.Duration, createdBy string, now time.Time) (string, *Record, error) {
	if err := ValidID(id); err != nil {
		return "", nil, err
	}
	secret := make([]byte, SecretBytes)
	salt := make([]byte, saltBytes)
	if _, err := rand.Read(secret); err != nil {
		return "", nil, err
	}
	if _, err := rand.Read(salt); err != nil {
		return "", nil, err
	}
	r := &Record{ID: id, HashAlg: HashAlg, Salt: salt, Hash: hash(salt, secret), AllQueues: all.Names(),
		CreatedAt: now.UTC(), CreatedBy: createdBy}
	if len(queues) > 0 {
		r.Queues = map[string][]string{}
		for q, s := range queues {
			r.Queues[q] = s.Names()
		}
	}
	if expires > 0 {
		t := now.Add(expires).UTC()
		r.ExpiresAt = &t
	}
	return Prefix + id + "_" + b64.EncodeToString(secret), r, nil
}

func hash(salt, secret []byte) []byte {
	h := sha256.New()
	h.Write(salt)
	h.Write(secret)
	return h.Sum(nil)
}

// Verify compares secret with the record in constant time.
func (r *Record) Verify(secret []byte) bool {
	return subtle.ConstantTimeCompare(hash(r.Salt, secret), r.Hash) == 1
}

// Expired reports whether the token is past its expiry at now.
func (r *Record) Expired(now time.Time) bool { return r.ExpiresAt != nil && !now.Before(*r.ExpiresAt) }

// Encode is the record's stored form.
func (r *Record) Encode() ([]byte, error) { return json.Marshal(r) }

// Decode reads a stored record and checks it.
func Decode(data []byte) (*Record, error) {
	r := &Record{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, err
	}
	if err := ValidID(r.ID); err != nil {
		return nil, err
	}
	if r.HashAlg != HashAlg || len(r.Hash) != sha256.Size || len(r.Salt) == 0 {
		return nil, fmt.Errorf("token %q: unknown hash %q or bad hash/salt", r.ID, r.HashAlg)
	}
	if _, err := ParseScopes(r.AllQueues); err != nil {
		return nil, err
	}
	for _, s := range r.Queues {
		if _, err := ParseScopes(s); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Principal is the record's rights.
func (r *Record) Principal() *Principal {
	p := &Principal{Kind: KindToken, ID: r.ID, Actor: "token:" + r.ID, queues: map[string]Scope{}}
	p.all, _ = ParseScopes(r.AllQueues)
	for q, names := range r.Queues {
		p.queues[q], _ = ParseScopes(names)
	}
	return p
}
