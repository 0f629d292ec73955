/* A near-zero-cost MARS stand-in for the benchmark: `tiny-mars GRIBFILE REQUESTFILE`.
 * Prints when it started (ns since the epoch), copies GRIBFILE to the request's target, exits 0. */
#include <stdio.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  printf("mars - INFO   - 00000000.000000 - started %lld%09ld\n", (long long)ts.tv_sec, ts.tv_nsec);
  fflush(stdout);
  if (argc < 3) return 2;
  FILE *req = fopen(argv[2], "r");
  if (!req) return 2;
  char line[8192], target[4096] = "";
  while (fgets(line, sizeof line, req)) {
    char *p = strstr(line, "target=\"");
    if (!p) continue;
    p += 8;
    char *q = strchr(p, '"');
    if (q) *q = 0;
    strncpy(target, p, sizeof target - 1);
  }
  fclose(req);
  if (!*target) return 3;
  FILE *in = fopen(argv[1], "rb"), *out = fopen(target, "wb");
  if (!in || !out) return 4;
  char buf[65536];
  size_t n, total = 0;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0) total += fwrite(buf, 1, n, out);
  fclose(in);
  if (fclose(out) != 0) return 4;
  printf("mars - INFO   - 00000000.000000 - Transfering %zu bytes\n", total);
  printf("mars - INFO   - 00000000.000000 - No errors reported\n");
  return 0;
}
