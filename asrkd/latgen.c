/* Lattice generation over a decoding graph (HCLG) and lattice best-path / posteriors.
 *
 * The search is Kaldi's LatticeFasterDecoder in outline: frame-synchronous token passing with a
 * beam and a max-active cutoff (when max-active binds, the next frame's tokens are kept within
 * Kaldi's adaptive beam: the max-active cutoff's distance from the best plus BEAM_DELTA, and
 * the epsilon pass uses the same cutoff), epsilon (non-emitting) arcs processed within a
 * frame, a forward link kept for every arc taken between surviving tokens, and at the end the links pruned to
 * those on a path within `lattice_beam` of the best. The result is a state-level lattice (not
 * determinized): states in topological order, arcs (src, dst, transition-id, word, graph cost,
 * acoustic cost), final costs. Costs are -log; the acoustic cost is the (already scaled) score
 * matrix negated.
 *
 * Called through ctypes from asrkd/lattice.py; no Python API here, so the library also builds
 * without Python headers.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INF_COST ((float)INFINITY)
/* thread-locals read without a call per access (a few pointers: the static TLS surplus that
 * glibc keeps for dlopen'ed libraries holds them) */
#define TLS __attribute__((tls_model("initial-exec")))
#define PF_FAR 16 /* prefetch distances, in tokens */
#define PF_NEAR 8
#define BEAM_DELTA 0.5f /* Kaldi's beam_delta: the adaptive beam's margin when max_active binds */

/* ---- the graph: OpenFst's binary VectorFst body read into CSR arrays ---- */

/* An arc as OpenFst stores it (and as the search reads it: one cache line holds four). */
typedef struct { int32_t ilabel, olabel; float weight; int32_t next; } Arc;

/* Reads `nstates` states from `p` (just after the header) into arc_start (nstates + 1),
 * arcs (narcs) and final_cost (nstates). Returns bytes read, or -1 if the buffer ends early or
 * the counts disagree. */
int64_t fst_parse(const uint8_t *p, int64_t len, int64_t nstates, int64_t narcs,
                  int64_t *arc_start, Arc *arcs, float *final_cost) {
  int64_t pos = 0, a = 0;
  for (int64_t s = 0; s < nstates; s++) {
    float f;
    int64_t n;
    if (pos + 12 > len) return -1;
    memcpy(&f, p + pos, 4);
    memcpy(&n, p + pos + 4, 8);
    pos += 12;
    final_cost[s] = f;
    arc_start[s] = a;
    if (n < 0 || a + n > narcs || pos + 16 * n > len) return -1;
    memcpy(&arcs[a], p + pos, 16 * (size_t)n);
    a += n;
    pos += 16 * n;
  }
  arc_start[nstates] = a;
  return a == narcs ? pos : -1;
}

/* ---- growable arrays ---- */

typedef struct { int32_t state; float cost; int32_t links; } Token;
typedef struct { int32_t dst, ilabel, olabel, next; float graph, ac; } Link;

typedef struct {
  Token *tok; int64_t ntok, captok;
  Link *link; int64_t nlink, caplink;
  int32_t *queue; int64_t nqueue, capqueue;
} Store;

static int grow(void **p, int64_t *cap, int64_t need, size_t size) {
  if (need <= *cap) return 0;
  int64_t c = *cap ? *cap : 1024;
  while (c < need) c *= 2;
  void *q = realloc(*p, (size_t)c * size);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

typedef struct {
  int64_t nstates, narcs;
  int32_t *src, *dst, *ilabel, *olabel, *state_frame;
  float *graph, *ac, *final_cost;
} Lattice;

void lat_free(Lattice *l) {
  if (!l) return;
  free(l->src); free(l->dst); free(l->ilabel); free(l->olabel); free(l->state_frame);
  free(l->graph); free(l->ac); free(l->final_cost);
  free(l);
}

int64_t lat_num_states(const Lattice *l) { return l->nstates; }
int64_t lat_num_arcs(const Lattice *l) { return l->narcs; }

void lat_copy(const Lattice *l, int32_t *src, int32_t *dst, int32_t *ilabel, int32_t *olabel,
              float *graph, float *ac, float *final_cost, int32_t *state_frame) {
  size_t na = (size_t)l->narcs, ns = (size_t)l->nstates;
  memcpy(src, l->src, na * 4); memcpy(dst, l->dst, na * 4);
  memcpy(ilabel, l->ilabel, na * 4); memcpy(olabel, l->olabel, na * 4);
  memcpy(graph, l->graph, na * 4); memcpy(ac, l->ac, na * 4);
  memcpy(final_cost, l->final_cost, ns * 4); memcpy(state_frame, l->state_frame, ns * 4);
}

/* ---- the search ---- */

typedef struct {
  const int64_t *arc_start; const Arc *arcs;
  const float *final_cost;
  const uint8_t *has_eps;  /* state -> 1 if it has an epsilon (input) arc */
  int32_t *tok_of_state;   /* state -> token of the frame being built, -1 if none */
  Store *st;
  int64_t frame_begin;     /* first token of the frame being built */
} Search;

static int32_t find_or_add(Search *s, int32_t state, float cost, int *changed) {
  int32_t t = s->tok_of_state[state];
  if (t >= 0) {
    *changed = cost < s->st->tok[t].cost;
    if (*changed) s->st->tok[t].cost = cost;
    return t;
  }
  Store *st = s->st;
  if (grow((void **)&st->tok, &st->captok, st->ntok + 1, sizeof(Token))) return -1;
  t = (int32_t)st->ntok++;
  st->tok[t].state = state;
  st->tok[t].cost = cost;
  st->tok[t].links = -1;
  s->tok_of_state[state] = t;
  *changed = 1;
  return t;
}

static int add_link(Store *st, int32_t src, int32_t dst, int32_t il, int32_t ol, float g,
                    float a) {
  if (grow((void **)&st->link, &st->caplink, st->nlink + 1, sizeof(Link))) return -1;
  Link *k = &st->link[st->nlink];
  k->dst = dst; k->ilabel = il; k->olabel = ol; k->graph = g; k->ac = a;
  k->next = st->tok[src].links;
  st->tok[src].links = (int32_t)st->nlink++;
  return 0;
}

static int push(Store *st, int32_t t) {
  if (grow((void **)&st->queue, &st->capqueue, st->nqueue + 1, sizeof(int32_t))) return -1;
  st->queue[st->nqueue++] = t;
  return 0;
}

/* Epsilon arcs among the tokens of the frame [s->frame_begin, ntok). */
static int process_nonemitting(Search *s, float cutoff) {
  Store *st = s->st;
  st->nqueue = 0;
  for (int64_t t = s->frame_begin; t < st->ntok; t++) {  /* only states with epsilon arcs */
    if (t + PF_NEAR < st->ntok) __builtin_prefetch(&s->has_eps[st->tok[t + PF_NEAR].state]);
    if (s->has_eps[st->tok[t].state] && push(st, (int32_t)t)) return -1;
  }
  while (st->nqueue > 0) {
    int32_t t = st->queue[--st->nqueue];
    float cost = st->tok[t].cost;
    if (cost > cutoff) continue;
    st->tok[t].links = -1; /* its epsilon links are made again below */
    int32_t state = st->tok[t].state;
    for (int64_t a = s->arc_start[state]; a < s->arc_start[state + 1]; a++) {
      const Arc *x = &s->arcs[a];
      if (x->ilabel != 0) continue;
      float nc = cost + x->weight;
      if (nc >= cutoff) continue;
      int changed;
      int32_t d = find_or_add(s, x->next, nc, &changed);
      if (d < 0 || add_link(st, t, d, 0, x->olabel, x->weight, 0.0f)) return -1;
      if (changed && s->has_eps[x->next] && push(st, d)) return -1;
    }
  }
  return 0;
}

static float kth_smallest(float *v, int64_t n, int64_t k) { /* quickselect, v reordered */
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    float pivot = v[(lo + hi) / 2];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (v[i] < pivot) i++;
      while (v[j] > pivot) j--;
      if (i <= j) { float x = v[i]; v[i] = v[j]; v[j] = x; i++; j--; }
    }
    if (k <= j) hi = j; else if (k >= i) lo = i; else return v[k];
  }
  return v[k];
}

static void reset_states(Search *s, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; t++) s->tok_of_state[s->st->tok[t].state] = -1;
}

/* Prunes the links to those within lattice_beam of the best path and writes the lattice. */
static Lattice *make_lattice(Search *s, const int64_t *frame_start, int32_t nframes,
                             float lattice_beam);

/* Decodes `nframes` frames of `scores` (nframes, ncols): the score of transition-id i (>= 1)
 * at frame t is scores[t * ncols + i - 1] (already multiplied by the acoustic scale).
 * Returns the lattice, or NULL on failure (out of memory, or no token survived). */
Lattice *latgen_decode(int64_t nstates, const int64_t *arc_start, const Arc *arcs,
                       const float *final_cost, const uint8_t *has_eps, int32_t start,
                       const float *scores, int32_t nframes, int32_t ncols, float beam,
                       int32_t max_active, float lattice_beam) {
  /* The token, link and state arrays stay with the thread from one utterance to the next:
   * fresh pages for every utterance cost as much as a tenth of the search. */
  static __thread TLS Store tls_store;
  static __thread TLS float *tls_costs;
  static __thread TLS int64_t tls_capcosts;
  static __thread TLS int32_t *tls_tok_of_state;  /* all -1 between calls */
  static __thread TLS int64_t tls_states;
  Store *st = &tls_store;  /* (thread-locals read once: each read is a call in a library) */
  st->ntok = st->nlink = st->nqueue = 0;
  if (tls_states != nstates) {
    free(tls_tok_of_state);
    tls_states = 0;
    tls_tok_of_state = malloc(sizeof(int32_t) * (size_t)nstates);
    if (!tls_tok_of_state) return NULL;
    for (int64_t i = 0; i < nstates; i++) tls_tok_of_state[i] = -1;
    tls_states = nstates;
  }
  int32_t *tok_of_state = tls_tok_of_state;
  Search s = {arc_start, arcs, final_cost, has_eps, tok_of_state, st, 0};
  Lattice *lat = NULL;
  int64_t *frame_start = malloc(sizeof(int64_t) * ((size_t)nframes + 2));
  if (!frame_start) goto done;
  int changed;
  frame_start[0] = 0;
  if (find_or_add(&s, start, 0.0f, &changed) < 0 || process_nonemitting(&s, beam)) goto done;
  for (int32_t t = 0; t < nframes; t++) {
    int64_t b = frame_start[t], e = st->ntok;
    reset_states(&s, b, e);
    frame_start[t + 1] = e;
    s.frame_begin = e;
    /* the cutoff: beam below the best, and at most max_active tokens */
    float best = INF_COST;
    int64_t best_k = b;
    for (int64_t k = b; k < e; k++)
      if (st->tok[k].cost < best) { best = st->tok[k].cost; best_k = k; }
    float cutoff = best + beam, adaptive = beam;
    if (max_active > 0 && e - b > max_active) {
      if (grow((void **)&tls_costs, &tls_capcosts, e - b, sizeof(float))) goto done;
      float *costs = tls_costs;
      for (int64_t k = b; k < e; k++) costs[k - b] = st->tok[k].cost;
      float kth = kth_smallest(costs, e - b, max_active);
      if (kth < cutoff) {
        cutoff = kth;
        adaptive = kth - best + BEAM_DELTA;
      }
    }
    const float *row = scores + (int64_t)t * ncols;
    /* a first bound from the best token's arcs (as Kaldi), so that tokens far outside the
     * next frame's beam are not created before a good one is seen: the same result, less work */
    float next_cutoff = INF_COST;
    if (isfinite(best)) {
      int32_t state = st->tok[best_k].state;
      for (int64_t a = arc_start[state]; a < arc_start[state + 1]; a++) {
        int32_t il = arcs[a].ilabel;
        if (il == 0 || il > ncols) continue;
        float nc = best + arcs[a].weight - row[il - 1];
        if (nc + adaptive < next_cutoff) next_cutoff = nc + adaptive;
      }
    }
    for (int64_t k = b; k < e; k++) {
      /* the graph does not fit in cache: each token's arcs are read from memory, so they are
       * asked for a few tokens ahead (the same result, ~8% less search time measured): the arc
       * offsets PF_FAR tokens ahead, the arcs PF_NEAR tokens ahead */
      if (k + PF_FAR < e) __builtin_prefetch(&arc_start[st->tok[k + PF_FAR].state]);
      if (k + PF_NEAR < e) __builtin_prefetch(&arcs[arc_start[st->tok[k + PF_NEAR].state]]);
      float cost = st->tok[k].cost;
      if (cost > cutoff) continue;
      int32_t state = st->tok[k].state;
      for (int64_t a = arc_start[state]; a < arc_start[state + 1]; a++) {
        const Arc *x = &arcs[a];
        int32_t il = x->ilabel;
        if (il == 0) continue;
        float ac = il <= ncols ? -row[il - 1] : INF_COST;
        float nc = cost + x->weight + ac;
        if (nc >= next_cutoff) continue;
        if (nc + adaptive < next_cutoff) next_cutoff = nc + adaptive;
        int32_t d = find_or_add(&s, x->next, nc, &changed);
        if (d < 0 || add_link(st, (int32_t)k, d, il, x->olabel, x->weight, ac)) goto done;
      }
    }
    if (st->ntok == e) goto done; /* nothing survived */
    if (process_nonemitting(&s, next_cutoff)) goto done;
  }
  frame_start[nframes + 1] = st->ntok;
  lat = make_lattice(&s, frame_start, nframes, lattice_beam);
done:
  /* tok_of_state back to all -1 for the next call: each frame's start cleared the frame before
   * it, so only the tokens of the last frame begun are left */
  reset_states(&s, s.frame_begin, st->ntok);
  free(frame_start);
  return lat;
}

/* Backward costs of every token (beta), within-frame epsilon links relaxed to convergence.
 * One pass over a frame's tokens from last to first takes every link; a link to a later token
 * (or the next frame) reads a final beta, so it is exact unless a link goes back to an earlier
 * token of the frame. Then only the tokens with links within the frame (listed in `intra`,
 * scratch of the frame's size) are relaxed again over those links until nothing changes: the
 * other links' betas are final after the first pass. */
static void backward(Search *s, const int64_t *fs, int32_t nframes, const float *fin,
                     float *beta, int32_t *intra) {
  Store *st = s->st;
  for (int32_t t = nframes; t >= 0; t--) {
    int64_t lo = fs[t], hi = fs[t + 1], nintra = 0;
    int back = 0;
    for (int64_t k = lo; k < hi; k++) beta[k] = t == nframes ? fin[k - lo] : INF_COST;
    for (int64_t k = hi - 1; k >= lo; k--) {
      int in_frame = 0;
      for (int32_t l = st->tok[k].links; l >= 0; l = st->link[l].next) {
        Link *x = &st->link[l];
        if (x->dst < hi && x->dst >= lo) { in_frame = 1; if (x->dst < k) back = 1; }
        float c = x->graph + x->ac + beta[x->dst];
        if (c < beta[k]) beta[k] = c;
      }
      if (in_frame) intra[nintra++] = (int32_t)k;
    }
    for (int pass = 0; back && pass < 1000; pass++) {
      int changed = 0;
      for (int64_t i = 0; i < nintra; i++) {
        int32_t k = intra[i];
        for (int32_t l = st->tok[k].links; l >= 0; l = st->link[l].next) {
          Link *x = &st->link[l];
          if (x->dst >= hi || x->dst < lo) continue;
          float c = x->graph + x->ac + beta[x->dst];
          if (c < beta[k]) { beta[k] = c; changed = 1; }
        }
      }
      if (!changed) break;
    }
  }
}

static Lattice *make_lattice(Search *s, const int64_t *fs, int32_t nframes,
                             float lattice_beam) {
  Store *st = s->st;
  int64_t n = st->ntok, nlast = fs[nframes + 1] - fs[nframes];
  /* per-token arrays in one buffer that stays with the thread (as the search's) */
  static __thread TLS int32_t *scratch;
  static __thread TLS int64_t capscratch;
  Lattice *lat = calloc(1, sizeof(Lattice));
  if (!lat || grow((void **)&scratch, &capscratch, 5 * n + nlast + 1, sizeof(int32_t)))
    goto fail;
  float *beta = (float *)scratch;
  int32_t *newid = scratch + n, *indeg = scratch + 2 * n, *order = scratch + 3 * n;
  int32_t *frame_of = scratch + 4 * n;
  float *fin = (float *)(scratch + 5 * n);
  memset(indeg, 0, sizeof(int32_t) * (size_t)n);
  int any_final = 0;
  for (int64_t k = 0; k < nlast; k++) {
    fin[k] = s->final_cost[st->tok[fs[nframes] + k].state];
    if (isfinite(fin[k])) any_final = 1;
  }
  if (!any_final) for (int64_t k = 0; k < nlast; k++) fin[k] = 0.0f; /* partial output */
  backward(s, fs, nframes, fin, beta, order); /* order: scratch until filled below */
  float best = st->tok[0].cost + beta[0];
  if (!isfinite(best)) goto fail;
  float limit = best + lattice_beam;
  for (int32_t t = 0; t <= nframes; t++)
    for (int64_t k = fs[t]; k < fs[t + 1]; k++) frame_of[k] = t;
  /* kept tokens, and the kept links' count into each (epsilon links only matter for order) */
  int64_t nkeep_links = 0;
  for (int64_t k = 0; k < n; k++) {
    if (st->tok[k].cost + beta[k] > limit) { st->tok[k].links = -1; continue; }
    int32_t *prev = &st->tok[k].links;
    while (*prev >= 0) { /* unlink what falls outside the lattice beam */
      Link *x = &st->link[*prev];
      if (st->tok[k].cost + x->graph + x->ac + beta[x->dst] > limit) { *prev = x->next; continue; }
      nkeep_links++;
      if (frame_of[x->dst] == frame_of[k]) indeg[x->dst]++;
      prev = &x->next;
    }
  }
  /* topological order: frame by frame, epsilon links within a frame by Kahn's algorithm */
  int64_t m = 0;
  for (int32_t t = 0; t <= nframes; t++) {
    int64_t head = m;
    for (int64_t k = fs[t]; k < fs[t + 1]; k++)
      if (st->tok[k].cost + beta[k] <= limit && indeg[k] == 0) order[m++] = (int32_t)k;
    while (head < m) {
      int32_t k = order[head++];
      for (int32_t l = st->tok[k].links; l >= 0; l = st->link[l].next) {
        int32_t d = st->link[l].dst;
        if (frame_of[d] == t && --indeg[d] == 0) order[m++] = d;
      }
    }
    for (int64_t k = fs[t]; k < fs[t + 1]; k++) /* an epsilon cycle: cannot happen in HCLG */
      if (st->tok[k].cost + beta[k] <= limit && indeg[k] > 0) goto fail;
  }
  for (int64_t k = 0; k < n; k++) newid[k] = -1;
  for (int64_t i = 0; i < m; i++) newid[order[i]] = (int32_t)i;
  lat->nstates = m;
  lat->narcs = nkeep_links;
  lat->src = malloc(4 * (size_t)(nkeep_links + 1)); lat->dst = malloc(4 * (size_t)(nkeep_links + 1));
  lat->ilabel = malloc(4 * (size_t)(nkeep_links + 1)); lat->olabel = malloc(4 * (size_t)(nkeep_links + 1));
  lat->graph = malloc(4 * (size_t)(nkeep_links + 1)); lat->ac = malloc(4 * (size_t)(nkeep_links + 1));
  lat->final_cost = malloc(4 * (size_t)(m + 1)); lat->state_frame = malloc(4 * (size_t)(m + 1));
  if (!lat->src || !lat->dst || !lat->ilabel || !lat->olabel || !lat->graph || !lat->ac ||
      !lat->final_cost || !lat->state_frame) goto fail;
  int64_t j = 0;
  for (int64_t i = 0; i < m; i++) { /* arcs sorted by source state */
    int32_t k = order[i];
    lat->state_frame[i] = frame_of[k];
    lat->final_cost[i] = frame_of[k] == nframes ? fin[k - fs[nframes]] : INF_COST;
    for (int32_t l = st->tok[k].links; l >= 0; l = st->link[l].next) {
      Link *x = &st->link[l];
      if (newid[x->dst] < 0) continue;
      lat->src[j] = (int32_t)i; lat->dst[j] = newid[x->dst];
      lat->ilabel[j] = x->ilabel; lat->olabel[j] = x->olabel;
      lat->graph[j] = x->graph; lat->ac[j] = x->ac;
      j++;
    }
  }
  lat->narcs = j;
  return lat;
fail:
  lat_free(lat);
  return NULL;
}

/* ---- over a written lattice: arcs sorted by source, states in topological order ---- */

/* The best path under cost = lmwt * graph + acscale * ac: its arcs' indices into `path`
 * (capacity narcs), their number returned (-1 if no final state is reachable); *cost set. */
int64_t lat_best_path(int64_t nstates, int64_t narcs, const int32_t *src, const int32_t *dst,
                      const float *graph, const float *ac, const float *final_cost, float lmwt,
                      float acscale, int64_t *path, double *cost) {
  double *d = malloc(sizeof(double) * (size_t)(nstates ? nstates : 1));
  int64_t *back = malloc(sizeof(int64_t) * (size_t)(nstates ? nstates : 1));
  int64_t len = -1;
  if (!d || !back || nstates == 0) goto done;
  for (int64_t i = 0; i < nstates; i++) { d[i] = INFINITY; back[i] = -1; }
  d[0] = 0.0;
  for (int64_t a = 0; a < narcs; a++) {
    double c = d[src[a]] + (double)lmwt * graph[a] + (double)acscale * ac[a];
    if (c < d[dst[a]]) { d[dst[a]] = c; back[dst[a]] = a; }
  }
  double bestc = INFINITY;
  int64_t bests = -1;
  for (int64_t i = 0; i < nstates; i++) {
    double c = d[i] + (double)lmwt * final_cost[i];
    if (c < bestc) { bestc = c; bests = i; }
  }
  if (bests < 0) goto done;
  *cost = bestc;
  len = 0;
  for (int64_t s = bests; back[s] >= 0; s = src[back[s]]) path[len++] = back[s];
  for (int64_t i = 0; i < len / 2; i++) { int64_t x = path[i]; path[i] = path[len - 1 - i]; path[len - 1 - i] = x; }
done:
  free(d); free(back);
  return len;
}

static double logadd(double a, double b) { /* -log(exp(-a) + exp(-b)) */
  if (a > b) { double x = a; a = b; b = x; }
  if (!isfinite(b)) return a;
  return a - log1p(exp(a - b));
}

/* Arc posteriors (0..1) under the same scaled costs, by forward-backward in the log semiring.
 * Returns the total cost (-log of the summed path probability), INFINITY if none. */
double lat_arc_post(int64_t nstates, int64_t narcs, const int32_t *src, const int32_t *dst,
                    const float *graph, const float *ac, const float *final_cost, float lmwt,
                    float acscale, float *post) {
  double *al = malloc(sizeof(double) * (size_t)(nstates ? nstates : 1));
  double *be = malloc(sizeof(double) * (size_t)(nstates ? nstates : 1));
  double total = INFINITY;
  if (!al || !be || nstates == 0) goto done;
  for (int64_t i = 0; i < nstates; i++) {
    al[i] = INFINITY;
    be[i] = (double)lmwt * final_cost[i];
  }
  al[0] = 0.0;
  for (int64_t a = 0; a < narcs; a++)
    al[dst[a]] = logadd(al[dst[a]], al[src[a]] + (double)lmwt * graph[a] + (double)acscale * ac[a]);
  for (int64_t a = narcs - 1; a >= 0; a--)
    be[src[a]] = logadd(be[src[a]], be[dst[a]] + (double)lmwt * graph[a] + (double)acscale * ac[a]);
  total = be[0];
  for (int64_t a = 0; a < narcs; a++) {
    double c = al[src[a]] + (double)lmwt * graph[a] + (double)acscale * ac[a] + be[dst[a]];
    post[a] = isfinite(total) ? (float)exp(total - c) : 0.0f;
  }
done:
  free(al); free(be);
  return total;
}

/* The best path whose words (non-zero olabels) are exactly `words` (nwords): its cost under
 * lmwt * graph + acscale * ac (INFINITY if the lattice has no such path), and its unscaled
 * graph and acoustic costs in *graph_sum / *ac_sum. */
double lat_words_cost(int64_t nstates, int64_t narcs, const int32_t *src, const int32_t *dst,
                      const int32_t *olabel, const float *graph, const float *ac,
                      const float *final_cost, float lmwt, float acscale, const int32_t *words,
                      int32_t nwords, double *graph_sum, double *ac_sum) {
  int64_t w = (int64_t)nwords + 1, n = nstates * w;
  double *d = malloc(sizeof(double) * (size_t)(n ? n : 1));
  double *g = malloc(sizeof(double) * (size_t)(n ? n : 1));
  double *a = malloc(sizeof(double) * (size_t)(n ? n : 1));
  double best = INFINITY;
  if (!d || !g || !a || nstates == 0) goto done;
  for (int64_t i = 0; i < n; i++) d[i] = INFINITY;
  d[0] = 0.0; g[0] = 0.0; a[0] = 0.0;
  for (int64_t e = 0; e < narcs; e++) {
    double c = (double)lmwt * graph[e] + (double)acscale * ac[e];
    for (int64_t k = 0; k < w; k++) {
      int64_t from = (int64_t)src[e] * w + k;
      if (!isfinite(d[from])) continue;
      int64_t k2 = k;
      if (olabel[e] != 0) {
        if (k >= nwords || words[k] != olabel[e]) continue;
        k2 = k + 1;
      }
      int64_t to = (int64_t)dst[e] * w + k2;
      if (d[from] + c < d[to]) {
        d[to] = d[from] + c; g[to] = g[from] + graph[e]; a[to] = a[from] + ac[e];
      }
    }
  }
  for (int64_t s = 0; s < nstates; s++) {
    int64_t i = s * w + nwords;
    double c = d[i] + (double)lmwt * final_cost[s];
    if (c < best) { best = c; *graph_sum = g[i] + final_cost[s]; *ac_sum = a[i]; }
  }
done:
  free(d); free(g); free(a);
  return best;
}
