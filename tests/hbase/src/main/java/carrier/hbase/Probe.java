package carrier.hbase;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.hbase.thrift.generated.AlreadyExists;
import org.apache.hadoop.hbase.thrift.generated.BatchMutation;
import org.apache.hadoop.hbase.thrift.generated.ColumnDescriptor;
import org.apache.hadoop.hbase.thrift.generated.Hbase;
import org.apache.hadoop.hbase.thrift.generated.Mutation;
import org.apache.hadoop.hbase.thrift.generated.TCell;
import org.apache.hadoop.hbase.thrift.generated.TRowResult;
import org.apache.hadoop.hbase.thrift.generated.TScan;
import org.apache.thrift.TConfiguration;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.transport.TSocket;

/**
 * Readiness probe and fact checker for the test HBase, speaking Thrift1 the way
 * Carrier does (binary protocol, unframed transport).
 *
 * <pre>
 *   Probe ready HOST PORT SECONDS [PID...]   wait until a probe table answers
 *   Probe facts HOST PORT                    check the Thrift1 calls Carrier relies on
 *   Probe ports N                            print N distinct free loopback ports
 * </pre>
 *
 * "ready" succeeds once create-table (if missing), put, get and delete round-trip
 * on table {@code carrier_probe}; it gives up after SECONDS, or at once when one
 * of the given processes has died. Exit status 0 on success, 1 otherwise.
 */
public final class Probe {
  private static final String TABLE = "carrier_probe";
  private static final int SOCKET_TIMEOUT_MS = 5_000;
  private static final long RETRY_PAUSE_MS = 500;

  private Probe() {}

  public static void main(String[] args) throws Exception {
    if (args.length >= 4 && args[0].equals("ready")) {
      List<Long> pids = new ArrayList<>();
      for (int i = 4; i < args.length; i++) {
        pids.add(Long.parseLong(args[i]));
      }
      System.exit(ready(args[1], Integer.parseInt(args[2]), Long.parseLong(args[3]), pids) ? 0 : 1);
    } else if (args.length == 2 && args[0].equals("ports")) {
      System.exit(ports(Integer.parseInt(args[1])) ? 0 : 1);
    } else if (args.length == 3 && args[0].equals("facts")) {
      System.exit(facts(args[1], Integer.parseInt(args[2])) ? 0 : 1);
    } else {
      System.err.println("usage: Probe ready HOST PORT SECONDS [PID...] | facts HOST PORT | ports N");
      System.exit(2);
    }
  }

  private static boolean ready(String host, int port, long seconds, List<Long> pids) {
    long deadline = System.nanoTime() + seconds * 1_000_000_000L;
    String last = "no attempt";
    for (int attempt = 1; System.nanoTime() < deadline; attempt++) {
      for (long pid : pids) {
        if (!alive(pid)) {
          System.err.println("probe: process " + pid + " has exited; giving up");
          return false;
        }
      }
      try (TSocket socket = new TSocket(new TConfiguration(), host, port, SOCKET_TIMEOUT_MS)) {
        socket.open();
        roundTrip(new Hbase.Client(new TBinaryProtocol(socket)));
        System.err.println("probe: ready after " + attempt + " attempts");
        return true;
      } catch (Exception e) {
        String now = e.getClass().getSimpleName() + ": " + firstLine(e.getMessage());
        if (!now.equals(last)) {
          System.err.println("probe: attempt " + attempt + ": " + now);
          last = now;
        }
      }
      try {
        Thread.sleep(RETRY_PAUSE_MS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return false;
      }
    }
    System.err.println("probe: not ready after " + seconds + " s; last error: " + last);
    return false;
  }

  /** Binds all N sockets at once so the kernel hands out N different ports. */
  private static boolean ports(int n) throws IOException {
    List<ServerSocket> held = new ArrayList<>();
    try {
      for (int i = 0; i < n; i++) {
        ServerSocket s = new ServerSocket();
        held.add(s);
        s.bind(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0));
      }
      for (ServerSocket s : held) {
        System.out.println(s.getLocalPort());
      }
      return true;
    } finally {
      for (ServerSocket s : held) {
        s.close();
      }
    }
  }

  /** A zombie still has a pid: read its state, not just its existence. */
  private static boolean alive(long pid) {
    try {
      String stat = Files.readString(Path.of("/proc/" + pid + "/stat"));
      char state = stat.charAt(stat.lastIndexOf(')') + 2);
      return state != 'Z' && state != 'X';
    } catch (IOException | RuntimeException e) {
      return ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false);
    }
  }

  private static void roundTrip(Hbase.Client hb) throws Exception {
    ByteBuffer table = bytes(TABLE);
    ensureTable(hb, table);
    ByteBuffer row = bytes("probe-" + ProcessHandle.current().pid());
    String want = "v" + System.nanoTime();
    hb.mutateRow(table, row, List.of(put("p:q", want)), Map.of());
    String got = cell(hb.getRow(table, row, Map.of()), "p:q");
    if (!want.equals(got)) {
      throw new IllegalStateException("read back " + got + ", wrote " + want);
    }
    hb.deleteAllRow(table, row, Map.of());
    if (!hb.getRow(table, row, Map.of()).isEmpty()) {
      throw new IllegalStateException("row still there after delete");
    }
  }

  private static void ensureTable(Hbase.Client hb, ByteBuffer table) throws Exception {
    if (hb.getTableNames().contains(table)) {
      return;
    }
    ColumnDescriptor family = new ColumnDescriptor();
    family.setName(bytes("p:"));
    family.setMaxVersions(1);
    try {
      hb.createTable(table, List.of(family));
    } catch (AlreadyExists e) {
      // Another probe won the race: fine.
    }
  }

  /** Checks, and prints, the behaviour of the Thrift1 calls Carrier's HbaseStore uses. */
  private static boolean facts(String host, int port) throws Exception {
    boolean allOk = true;
    try (TSocket socket = new TSocket(new TConfiguration(), host, port, SOCKET_TIMEOUT_MS)) {
      socket.open();
      Hbase.Client hb = new Hbase.Client(new TBinaryProtocol(socket));
      ByteBuffer table = bytes(TABLE);
      ensureTable(hb, table);
      String base = "facts-" + System.nanoTime() + "-";

      // checkAndPut with an empty expected value: insert-if-absent?
      ByteBuffer row = bytes(base + "cap");
      boolean first = hb.checkAndPut(table, row, bytes("p:q"), bytes(""), put("p:q", "one"), Map.of());
      boolean second = hb.checkAndPut(table, row, bytes("p:q"), bytes(""), put("p:q", "two"), Map.of());
      String kept = cell(hb.getRow(table, row, Map.of()), "p:q");
      allOk &= report("checkAndPut(empty value) inserts when absent", first);
      allOk &= report("checkAndPut(empty value) refuses when present", !second);
      allOk &= report("checkAndPut kept the first value", "one".equals(kept));
      // Another column of the same row exists, checked column absent: does it still insert?
      boolean other = hb.checkAndPut(table, row, bytes("p:r"), bytes(""), put("p:r", "x"), Map.of());
      allOk &= report("checkAndPut(empty value) on an absent column of an existing row inserts", other);

      // atomicIncrement: 8-byte big-endian counter, created at 0.
      ByteBuffer crow = bytes(base + "ctr");
      long a = hb.atomicIncrement(table, crow, bytes("p:c"), 5);
      long b = hb.atomicIncrement(table, crow, bytes("p:c"), 3);
      long c = hb.atomicIncrement(table, crow, bytes("p:c"), 0);
      ByteBuffer raw = cellBytes(hb.getRow(table, crow, Map.of()), "p:c");
      allOk &= report("atomicIncrement 5 then 3 then 0 returns 5, 8, 8", a == 5 && b == 8 && c == 8);
      allOk &= report("counter cell is 8 bytes big-endian", raw != null && raw.remaining() == 8 && raw.getLong(raw.position()) == 8);
      hb.mutateRow(table, crow, List.of(put("p:s", "abc")), Map.of());
      try {
        hb.atomicIncrement(table, crow, bytes("p:s"), 1);
        allOk &= report("atomicIncrement on a 3-byte cell fails", false);
      } catch (Exception e) {
        report("atomicIncrement on a 3-byte cell fails (" + e.getClass().getSimpleName() + ")", true);
      }

      // mutateRows: several rows in one call; then a reversed scan reads them newest-first.
      List<BatchMutation> batch = new ArrayList<>();
      for (int i = 1; i <= 5; i++) {
        batch.add(new BatchMutation(bytes(base + "m" + i), List.of(put("p:q", "m" + i))));
      }
      hb.mutateRows(table, batch, Map.of());
      List<String> forward = scan(hb, table, base + "m", base + "n", false);
      allOk &= report("mutateRows wrote 5 rows, forward scan " + forward,
          forward.equals(List.of(base + "m1", base + "m2", base + "m3", base + "m4", base + "m5")));
      // Reversed: startRow is the larger key (inclusive), stopRow the smaller (exclusive).
      List<String> back = scan(hb, table, base + "m4", base + "m1", true);
      allOk &= report("reversed scan from m4 down to (excl.) m1 gives " + back,
          back.equals(List.of(base + "m4", base + "m3", base + "m2")));
      List<String> backAll = scan(hb, table, base + "m\u00ff", base + "m", true);
      allOk &= report("reversed scan of the prefix gives m5..m1: " + backAll,
          backAll.equals(List.of(base + "m5", base + "m4", base + "m3", base + "m2", base + "m1")));

      // mutateRows with one bad mutation (unknown family): does anything land?
      List<BatchMutation> bad = List.of(
          new BatchMutation(bytes(base + "b1"), List.of(put("p:q", "ok"))),
          new BatchMutation(bytes(base + "b2"), List.of(put("nosuchfamily:q", "bad"))));
      try {
        hb.mutateRows(table, bad, Map.of());
        report("mutateRows with an unknown family raised no error", true);
      } catch (Exception e) {
        report("mutateRows with an unknown family raised " + e.getClass().getSimpleName(), true);
      }
      report("after that, the good row of the batch is "
          + (hb.getRow(table, bytes(base + "b1"), Map.of()).isEmpty() ? "absent" : "present"), true);
    }
    return allOk;
  }

  private static List<String> scan(Hbase.Client hb, ByteBuffer table, String start, String stop, boolean reversed)
      throws Exception {
    TScan scan = new TScan();
    scan.setStartRow(bytes(start));
    scan.setStopRow(bytes(stop));
    scan.setReversed(reversed);
    scan.setCaching(100);
    int id = hb.scannerOpenWithScan(table, scan, Map.of());
    List<String> rows = new ArrayList<>();
    try {
      for (int round = 0; round < 100; round++) {
        List<TRowResult> got = hb.scannerGetList(id, 100);
        if (got.isEmpty()) {
          break;
        }
        for (TRowResult r : got) {
          rows.add(str(r.row));
        }
      }
    } finally {
      hb.scannerClose(id);
    }
    return rows;
  }

  private static boolean report(String what, boolean ok) {
    System.out.println((ok ? "ok   " : "FAIL ") + what);
    return ok;
  }

  private static Mutation put(String column, String value) {
    Mutation m = new Mutation();
    m.setColumn(bytes(column));
    m.setValue(bytes(value));
    m.setIsDelete(false);
    m.setWriteToWAL(true);
    return m;
  }

  private static ByteBuffer cellBytes(List<TRowResult> rows, String column) {
    if (rows.isEmpty() || rows.get(0).columns == null) {
      return null;
    }
    TCell c = rows.get(0).columns.get(bytes(column));
    return c == null ? null : c.value;
  }

  private static String cell(List<TRowResult> rows, String column) {
    ByteBuffer b = cellBytes(rows, column);
    return b == null ? null : str(b);
  }

  private static ByteBuffer bytes(String s) {
    return ByteBuffer.wrap(s.getBytes(StandardCharsets.UTF_8));
  }

  private static String str(ByteBuffer b) {
    byte[] a = new byte[b.remaining()];
    b.duplicate().get(a);
    return new String(a, StandardCharsets.UTF_8);
  }

  private static String firstLine(String s) {
    if (s == null) {
      return "";
    }
    int nl = s.indexOf('\n');
    return nl < 0 ? s : s.substring(0, nl);
  }
}
