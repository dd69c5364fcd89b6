/*
 * A Java agent that does nothing.
 *
 * LocalStack starts DynamoDB Local with -javaagent:ddb-local-loader-0.1.jar (normally
 * downloaded: a patch allowing more than 20 GSIs). Offline, up.sh compiles this file
 * into that jar instead. The JVM refuses to start with an agent jar that has no
 * Premain-Class, or one naming a missing class or a class without premain, so the
 * jar needs this real (empty) class.
 */
public final class NoopAgent {
    private NoopAgent() {}

    public static void premain(String args, java.lang.instrument.Instrumentation inst) {}
}
