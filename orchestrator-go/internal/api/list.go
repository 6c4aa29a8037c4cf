package api

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
)

// ListJobs limits.
const (
	defaultListLimit = 50
	maxListLimit     = 500
	defaultListScan  = 5000
	maxListScan      = 50000
)

// ListJobs implements JobService: it reads the newest `scan` records of the
// job bucket's stream (History 1: one message per live key) and filters them.
func (s *Service) ListJobs(ctx context.Context, req *tandemv1.ListJobsRequest) (*tandemv1.ListJobsResponse, error) {
	return wrap(s.listJobs(ctx, req))
}

func (s *Service) listJobs(ctx context.Context, req *tandemv1.ListJobsRequest) (*tandemv1.ListJobsResponse, error) {
	if q := req.GetQueue(); q != "" {
		if err := ident.Queue("queue", q); err != nil {
			return nil, err
		}
		if err := auth.Require(ctx, q, auth.Read); err != nil {
			return nil, err
		}
	}
	if k := req.GetLabelKey(); k != "" {
		if err := ident.LabelKey("label_key", k); err != nil {
			return nil, err
		}
	}
	if err := ident.Text("label_value", req.GetLabelValue(), ident.MaxLabelValue); err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	scan := int(req.GetScan())
	if scan <= 0 {
		scan = defaultListScan
	}
	scan = min(scan, maxListScan)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	out := &tandemv1.ListJobsResponse{}
	var jobs []*tandemv1.Job
	recorded := map[string]bool{}
	err := s.scanStream(ctx, out, "KV_"+broker.JobsBucket, broker.JobKVSubject(">"), scan, func(m jetstream.Msg) {
		if op := m.Headers().Get("KV-Operation"); op != "" || len(m.Data()) == 0 {
			return // a delete, purge or expiry marker
		}
		j := &tandemv1.Job{}
		if proto.Unmarshal(m.Data(), j) != nil {
			return
		}
		recorded[j.GetId()] = true
		if matches(j, req) && auth.Can(ctx, j.GetQueue(), auth.Read) {
			j.Result = nil
			jobs = append(jobs, j)
		}
	})
	if err != nil {
		return nil, err
	}
	// Jobs no worker has touched yet have no record: their message in the
	// queue's stream is their QUEUED record.
	if st := req.GetState(); st == tandemv1.JobState_JOB_STATE_UNSPECIFIED || st == tandemv1.JobState_JOB_STATE_QUEUED {
		for _, q := range s.listJobsQueues(req.GetQueue()) {
			err := s.scanStream(ctx, out, broker.QueueStream(q), broker.JobSubject(q, "*"), scan, func(m jetstream.Msg) {
				spec, _, _, err := jobstore.DecodeMsg(m.Headers(), m.Data())
				if err != nil || recorded[spec.GetId()] {
					return
				}
				if j := jobstore.QueuedRecord(spec).Job; matches(j, req) && auth.Can(ctx, j.GetQueue(), auth.Read) {
					jobs = append(jobs, j)
				}
			})
			if err != nil {
				return nil, err
			}
		}
	}
	// Newest first (ids break ties: ULIDs sort by time; ids derived from
	// idempotency keys do not).
	slices.SortFunc(jobs, func(a, b *tandemv1.Job) int {
		if c := b.GetCreatedAt().AsTime().Compare(a.GetCreatedAt().AsTime()); c != 0 {
			return c
		}
		return strings.Compare(b.GetId(), a.GetId())
	})
	if len(jobs) > limit {
		jobs = jobs[:limit]
	}
	out.Jobs = jobs
	return out, nil
}

// listJobsQueues is the queues whose streams ListJobs reads: the one asked for,
// or every queue this orchestrator serves.
func (s *Service) listJobsQueues(queue string) []string {
	if queue != "" {
		return []string{queue}
	}
	var qs []string
	for name := range s.Broker.Queues() {
		qs = append(qs, name)
	}
	slices.Sort(qs)
	return qs
}

// scanStream calls fn for each of the newest `scan` messages of a stream on
// filter, counting them in out.Scanned (and setting out.Truncated when older
// ones were left). A stream that does not exist has nothing to scan.
func (s *Service) scanStream(ctx context.Context, out *tandemv1.ListJobsResponse, name, filter string, scan int, fn func(jetstream.Msg)) error {
	stream, err := s.Broker.JS().Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return apierr.BrokerUnavailable(err)
	}
	info := stream.CachedInfo().State
	last, first := info.LastSeq, info.FirstSeq
	if last == 0 || info.Msgs == 0 {
		return nil
	}
	start := first
	if last >= uint64(scan) && last-uint64(scan)+1 > first {
		start = last - uint64(scan) + 1
		out.Truncated = true
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start,
	})
	if err != nil {
		return apierr.BrokerUnavailable(err)
	}
	for done := false; !done; {
		batch, err := cons.Fetch(512, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return apierr.BrokerUnavailable(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			out.Scanned++
			md, err := m.Metadata()
			if err != nil {
				return apierr.BrokerUnavailable(err)
			}
			if md.NumPending == 0 || md.Sequence.Stream >= last {
				done = true
			}
			fn(m)
		}
		if n == 0 {
			break
		}
	}
	return nil
}

func matches(j *tandemv1.Job, req *tandemv1.ListJobsRequest) bool {
	if q := req.GetQueue(); q != "" && j.GetQueue() != q {
		return false
	}
	if st := req.GetState(); st != tandemv1.JobState_JOB_STATE_UNSPECIFIED && j.GetState() != st {
		return false
	}
	if k := req.GetLabelKey(); k != "" {
		v, ok := j.GetLabels()[k]
		if !ok || req.GetLabelValue() != "" && v != req.GetLabelValue() {
			return false
		}
	}
	return true
}
